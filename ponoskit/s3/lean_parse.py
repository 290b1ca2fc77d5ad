"""A faster parse of the two answers the jobs read by the million: ListObjectsV2 and DeleteObjects.

botocore parses every XML answer with a generic, shape-driven walker: about 17 us per listed
key, a fifth of the rename's own CPU with the DeleteObjects answers. These two answers have a
fixed, flat shape, and ElementTree's C parser reads them in a third of that. The result is
the dict botocore would give for the fields the jobs use (keys, sizes, ETags, storage classes,
timestamps as sent, truncation, tokens, prefixes; deleted keys, versions and errors), which
botocore's own handlers then post-process as usual (URL-decoding of keys, retries).
Anything else, and any answer this parse does not understand, goes to botocore's parser.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from botocore.parsers import PROTOCOL_PARSERS, ResponseParserFactory, RestXMLParser


def _ns(root: ET.Element) -> str:
    return root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _bool(text):
    return None if text is None else text.strip().lower() == "true"


def _int(text):
    return None if text is None else int(text)


def parse_list_objects_v2(body: bytes) -> dict:
    root = ET.fromstring(body)
    ns = _ns(root)
    parsed: dict = {}
    for name in ("Name", "Prefix", "Delimiter", "EncodingType", "ContinuationToken", "NextContinuationToken",
                 "StartAfter"):
        value = root.findtext(ns + name)
        if value is not None:
            parsed[name] = value
    for name, convert in (("IsTruncated", _bool), ("MaxKeys", _int), ("KeyCount", _int)):
        value = root.findtext(ns + name)
        if value is not None:
            parsed[name] = convert(value)
    contents = []
    for element in root.iterfind(ns + "Contents"):
        item = {}
        for child in element:
            tag = child.tag[len(ns):]
            if tag == "Size":
                item["Size"] = int(child.text)
            elif tag in ("Key", "ETag", "LastModified", "StorageClass"):
                item[tag] = child.text or ""
        contents.append(item)
    if contents:
        parsed["Contents"] = contents
    prefixes = [{"Prefix": element.findtext(ns + "Prefix")} for element in root.iterfind(ns + "CommonPrefixes")]
    if prefixes:
        parsed["CommonPrefixes"] = prefixes
    return parsed


def parse_delete_objects(body: bytes) -> dict:
    root = ET.fromstring(body)
    ns = _ns(root)
    parsed: dict = {}
    deleted = []
    for element in root.iterfind(ns + "Deleted"):
        item = {}
        for child in element:
            tag = child.tag[len(ns):]
            item[tag] = _bool(child.text) if tag == "DeleteMarker" else (child.text or "")
        deleted.append(item)
    if deleted:
        parsed["Deleted"] = deleted
    errors = [{child.tag[len(ns):]: child.text or "" for child in element} for element in root.iterfind(ns + "Error")]
    if errors:
        parsed["Errors"] = errors
    return parsed


LEAN = {"ListObjectsV2Output": parse_list_objects_v2, "DeleteObjectsOutput": parse_delete_objects}


class LeanRestXMLParser(RestXMLParser):
    def _do_parse(self, response, shape):
        lean = LEAN.get(getattr(shape, "name", None))
        if lean is not None and response.get("body"):
            try:
                parsed = lean(response["body"])
            except (ET.ParseError, ValueError, TypeError, AttributeError):
                return super()._do_parse(response, shape)  # botocore says what is wrong with it
            parsed["ResponseMetadata"] = self._populate_response_metadata(response)
            return parsed
        return super()._do_parse(response, shape)


class LeanParserFactory(ResponseParserFactory):
    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return LeanRestXMLParser(**self._defaults)
        return PROTOCOL_PARSERS[protocol_name](**self._defaults)
