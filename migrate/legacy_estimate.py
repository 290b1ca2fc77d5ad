"""How many legacy objects are still in place, without listing millions of keys.

The cheap way (the default): a random sample of workflows from the database, and for each, in
each bucket, one ``ListObjectsV2(Prefix="<workflow>/", MaxKeys=1)``: does anything remain
under its legacy prefix? The share of sampled workflows with something left, times the
workflows, estimates the *workflows (legacy prefixes) with objects left*, with a Wilson 95%
interval (sound for small samples and for shares near 0 or 1, where the normal one is not).
What it costs is known in advance: one request per sampled workflow and bucket.

The exact way (``--exact``): list every key and classify it (ponoskit.keys) against the
task table: legacy *objects* and the workflows they sit under, at one LIST request per 1,000
keys.

Where the workflow ids come from: ``ponos_workflow`` until the contract, then its kept copy
(``--keep-workflow-table``); after a contract that dropped it, no sample can be drawn and
only ``--exact`` can tell.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Optional

from ponoskit import keys, schema
from ponoskit.s3.listing import iter_pages, iter_responses
from ponoskit.tasks import known_tasks_of_keys

from .fold.job import KEPT_WORKFLOW_TABLE

Z_95 = 1.959964
LOOKUPS_IN_FLIGHT = 16
KEYS_PER_LIST = 1000


@dataclass
class Estimate:
    """Workflows with legacy objects left in one bucket, and what finding out cost."""
    method: str  # sample, exact, or none (no workflow ids to sample)
    workflows_left: Optional[int] = None  # the estimate (exact with --exact)
    low: Optional[int] = None  # the 95% interval
    high: Optional[int] = None
    sampled: int = 0
    sampled_with_legacy: int = 0
    population: int = 0  # workflows the sample was drawn from
    requests: int = 0  # S3 requests spent
    objects_left: Optional[int] = None  # --exact only: legacy objects
    note: str = ""

    def to_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value not in (None, "")}

    def describe(self) -> str:
        if self.method == "none":
            return self.note
        if self.method == "exact":
            return (f"{self.objects_left} legacy object(s) under {self.workflows_left} workflow prefix(es) "
                    f"(exact, {self.requests} LIST requests)")
        if self.low == self.high:
            return (f"{self.workflows_left} of {self.population} workflows still have legacy objects (every "
                    f"workflow looked up: {self.requests} LIST requests)")
        return (f"about {self.workflows_left} of {self.population} workflows still have legacy objects (95% "
                f"interval {self.low}-{self.high}; {self.sampled_with_legacy} of {self.sampled} sampled; "
                f"{self.requests} LIST requests)")


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def workflow_table(conn) -> Optional[str]:
    """Where the workflow ids are: the live table, or the copy a contract kept."""
    for table in ("ponos_workflow", KEPT_WORKFLOW_TABLE):
        if schema.table_exists(conn, table):
            return table
    return None


def sample_workflows(conn, table: str, size: int, seed: Optional[float] = None) -> tuple[list[str], int]:
    """``size`` workflow ids drawn at random (all of them when there are fewer), and how many
    there are. ``seed`` (-1..1) makes the draw repeatable (tests)."""
    population = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    if seed is not None:
        conn.execute("SELECT setseed(%s)", (seed,))
    rows = conn.execute(f"SELECT id::text FROM {table} ORDER BY random() LIMIT %s", (size,)).fetchall()
    return [row[0] for row in rows], population


def has_objects(context, bucket: str, prefix: str) -> bool:
    """One LIST request, at most one key: is anything under ``prefix``?"""
    response = next(iter_responses(context.s3, retrier=context.retrier, Bucket=bucket, Prefix=prefix, MaxKeys=1))
    return bool(response.get("Contents"))


def sample_estimate(context, bucket: str, workflows: list[str], population: int) -> Estimate:
    """Look up the legacy prefix of each sampled workflow in ``bucket``; scale to the population."""
    with ThreadPoolExecutor(LOOKUPS_IN_FLIGHT, thread_name_prefix="status-sample") as pool:
        found = sum(pool.map(lambda workflow: has_objects(context, bucket, f"{workflow}/"), workflows))
    sampled = len(workflows)
    if sampled >= population:  # a census: no uncertainty left
        low = high = estimate = found
    else:
        low_share, high_share = wilson(found, sampled)
        estimate = round(found / sampled * population) if sampled else 0
        # The sample itself is known: at least what it found, at most all but its clean ones.
        low = max(found, math.floor(low_share * population))
        high = min(population - (sampled - found), math.ceil(high_share * population))
    return Estimate("sample", estimate, low, high, sampled, found, population, requests=sampled)


def estimate_all(context, passes: list[keys.BucketPass], size: int,
                 seed: Optional[float] = None) -> dict[str, Estimate]:
    """The sample estimate for every bucket, one draw of workflows shared by all."""
    table = workflow_table(context.db)
    if table is None:
        note = ("no workflow ids left to sample (the contract dropped ponos_workflow): --exact lists the "
                "buckets to count what is left")
        return {p.bucket: Estimate("none", note=note) for p in passes}
    workflows, population = sample_workflows(context.db, table, size, seed)
    return {p.bucket: sample_estimate(context, p.bucket, workflows, population) for p in passes}


def exact_cost(context, passes: list[keys.BucketPass]) -> str:
    """What --exact will cost, from the database's row estimates (no S3 request): artifact
    rows and tasks (one log each) are about the objects there are."""
    rows = context.db.execute(
        "SELECT coalesce(sum(greatest(reltuples, 0)), 0)::bigint FROM pg_class "
        "WHERE oid IN (to_regclass('ponos_artifact'), to_regclass('ponos_task'))").fetchone()[0]
    if rows <= 0:  # never analyzed (a young database): counting is cheap then
        rows = context.db.execute("SELECT (SELECT count(*) FROM ponos_artifact) + "
                                  "(SELECT count(*) FROM ponos_task)").fetchone()[0]
    names = ", ".join(f"s3://{p.bucket}" for p in passes)
    requests = max(len(passes), math.ceil(rows / KEYS_PER_LIST))
    return (f"--exact lists every key of {names}: about {rows:,} objects by the database's rows (artifacts "
            f"and task logs), about {requests:,} LIST requests (1,000 keys each)")


def exact_count(context, bucket_pass: keys.BucketPass) -> Estimate:
    """List the whole bucket; count legacy objects and the workflow prefixes they sit under."""
    objects, workflows, requests = 0, set(), 0
    for page in iter_pages(context.s3, bucket_pass.bucket, retrier=context.retrier):
        requests += 1
        known = known_tasks_of_keys(context.db, (obj.key for obj in page))
        for obj in page:
            found = keys.classify(obj.key, known, logs=bucket_pass.logs, artifacts=bucket_pass.artifacts)
            if found.is_legacy:
                objects += 1
                workflows.add(obj.key.split("/", 1)[0].lower())
    return Estimate("exact", len(workflows), len(workflows), len(workflows), requests=max(requests, 1),
                    objects_left=objects)
