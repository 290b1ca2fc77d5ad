"""Read-only questions about the catalog. Every phase asks one before it acts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import psycopg

from ponoskit import schema


@dataclass(frozen=True)
class Column:
    type: str
    not_null: bool


@dataclass(frozen=True)
class Constraint:
    type: str  # pg_constraint.contype: c, f, u, p
    validated: bool


@dataclass(frozen=True)
class Index:
    table: str
    valid: bool  # False after a CREATE INDEX CONCURRENTLY that failed or was killed
    constraint: Optional[str]  # the constraint the index backs, if any


table_exists = schema.table_exists  # one definition, in ponoskit.schema


def column(conn: psycopg.Connection, table: str, name: str) -> Optional[Column]:
    row = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (table, name)).fetchone()
    return Column(*row) if row else None


def constraint(conn: psycopg.Connection, table: str, name: str) -> Optional[Constraint]:
    row = conn.execute(
        "SELECT contype::text, convalidated FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
        (table, name)).fetchone()
    return Constraint(*row) if row else None


def index(conn: psycopg.Connection, name: str) -> Optional[Index]:
    row = conn.execute(
        "SELECT i.indrelid::regclass::text, i.indisvalid AND i.indisready, c.conname "
        "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype IN ('u', 'p') "
        "WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    return Index(*row) if row else None


def trigger_exists(conn: psycopg.Connection, table: str, name: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s)",
        (table, name)).fetchone()[0]


def function_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %s AND pronamespace = current_schema()::regnamespace)",
        (name,)).fetchone()[0]

