"""The orderflow saga on DBOS Transact (Python): a benchmark peer. See README.md beside this file.

One process: FastAPI served by uvicorn, DBOS launched in the same process (as DBOS's FastAPI guide
does), one long-lived NATS connection on a background event loop. The saga is one DBOS workflow per
order whose workflow id is the order id:

    reserve stock (datasource transaction) -> charge (step, retried)
      -> confirm (datasource transaction) -> publish orders.confirmed (step)
      or release (datasource transaction, the compensation) -> publish orders.cancelled (step)

POST /orders answers 202 once DBOS.start_workflow has durably recorded the workflow, and then
publishes orders.created.

Configured by env (the bench contract, bench/peers/README.md): PEER_PORT_BASE, PEER_NATS_URL,
PEER_GATEWAY_URL, PEER_DATA_DIR, PEER_DATABASE_URL (sqlite:///<path> or postgresql://...).
"""

from __future__ import annotations

import time

_PROCESS_START = time.monotonic()

import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

import httpx
import nats
import sqlalchemy as sa
import uvicorn
from dbos import DBOS, DBOSConfig, SetWorkflowID, SQLAlchemyDatasource
from dbos import error as dbos_error
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

log = logging.getLogger("dbos-peer")


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        sys.exit(f"dbos peer: {name} is not set (see bench/peers/README.md)")
    return value


PORT = int(_env("PEER_PORT_BASE"))
NATS_URL = _env("PEER_NATS_URL")
GATEWAY_URL = _env("PEER_GATEWAY_URL").rstrip("/")
DATA_DIR = _env("PEER_DATA_DIR")
DATABASE_URL = _env("PEER_DATABASE_URL")
IS_SQLITE = DATABASE_URL.startswith("sqlite")
if not IS_SQLITE and not DATABASE_URL.startswith(("postgresql://", "postgres://")):
    sys.exit("dbos peer: PEER_DATABASE_URL must be sqlite:///<path> or postgresql://...")
if DATABASE_URL.startswith("postgres://"):
    DATABASE_URL = "postgresql://" + DATABASE_URL[len("postgres://") :]

# Tuning (README.md says why). Pools: DBOS's default system-database pool is 20 connections.
SYS_DB_POOL = int(os.environ.get("DBOS_PEER_SYS_POOL", "20"))
APP_DB_POOL = int(os.environ.get("DBOS_PEER_APP_POOL", "20"))
# Flow control. DBOS runs each started workflow on a thread of its executor, unbounded by default.
# A saga is CPU-bound Python under one GIL, so more threads only add contention: bounded, orders
# past the bound wait in memory, already durable (README.md: "Tuning" has the measurements).
# The alternative DBOS documents is a queue with a per-process concurrency limit: 0 = no queue
# (start each workflow directly, the default); a queue bounds the running workflows itself.
QUEUE_CONCURRENCY = int(os.environ.get("DBOS_PEER_QUEUE_CONCURRENCY", "0"))
MAX_THREADS = int(os.environ.get("DBOS_PEER_MAX_THREADS", "0" if QUEUE_CONCURRENCY > 0 else "4"))
QUEUE_POLL_S = float(os.environ.get("DBOS_PEER_QUEUE_POLL_S", "0.05"))
ORDER_QUEUE = "orders"
# Charge retries: 5xx, 429, timeouts and refused connections are retried with the same key.
CHARGE_ATTEMPTS = 8
CHARGE_FIRST_WAIT_S = 0.25
CHARGE_TIMEOUT = httpx.Timeout(5.0, connect=2.0)

CORRELATION_HEADER = "Orderflow-Correlation-Id"


# --------------------------------------------------------------------------------------------
# Databases. PEER_DATABASE_URL is DBOS's system database; the application tables (products,
# orders) are a DBOS datasource: on PostgreSQL the same database, on SQLite a file beside it.
# --------------------------------------------------------------------------------------------


def _sqlite_engine(url: str, pool_size: int) -> sa.Engine:
    """A SQLite engine with the pragmas DBOS sets on its own (IMMEDIATE transactions, a 30 s busy
    timeout, foreign keys) plus WAL with synchronous=NORMAL, which is what orderflow's services use:
    a commit survives a process crash (not a power cut) without an fsync per commit."""
    path = sa.make_url(url).database
    if not path or path == ":memory:":
        sys.exit("dbos peer: a SQLite PEER_DATABASE_URL must name a file")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # journal_mode=WAL is a property of the file: set it once, before the engine connects.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


def _sibling_sqlite_url(url: str, suffix: str) -> str:
    path = sa.make_url(url).database or ""
    stem, ext = os.path.splitext(path)
    return f"sqlite:///{stem}{suffix}{ext or '.sqlite'}"


if IS_SQLITE:
    # The application tables live in a second file beside the system database: a datasource
    # transaction holds its file's write lock while DBOS checks, with a write to the system
    # database, that the workflow is still its own; in one file that write would wait on itself.
    APP_DATABASE_URL = _sibling_sqlite_url(DATABASE_URL, "-app")
    ds = SQLAlchemyDatasource.create(
        APP_DATABASE_URL, engine=_sqlite_engine(APP_DATABASE_URL, APP_DB_POOL)
    )
    # pysqlite knows only SERIALIZABLE (and READ UNCOMMITTED); the file lock serializes writers.
    TX_ISOLATION = "SERIALIZABLE"
else:
    # PostgreSQL: one database, the application tables in `public`, DBOS's in its `dbos` schema.
    APP_DATABASE_URL = DATABASE_URL
    ds = SQLAlchemyDatasource.create(
        DATABASE_URL,
        engine_kwargs={"pool_size": APP_DB_POOL, "max_overflow": 0, "pool_pre_ping": True},
    )
    # Conditional UPDATE ... WHERE available >= qty under READ COMMITTED re-checks the row after
    # waiting for its lock, so it never oversells and never needs a serialization retry.
    TX_ISOLATION = "READ COMMITTED"

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS products (
        product_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        price_cents BIGINT NOT NULL,
        available BIGINT NOT NULL,
        reserved BIGINT NOT NULL DEFAULT 0,
        sold BIGINT NOT NULL DEFAULT 0
    )""",
    # One row per order that reached the reservation: its state is what makes every DB-writing
    # step a no-op when it runs again (reserved -> confirmed | cancelled, each at most once).
    """CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        total_cents BIGINT NOT NULL DEFAULT 0,
        lines TEXT NOT NULL
    )""",
]


def create_app_tables() -> None:
    with ds.engine.begin() as conn:
        for ddl in SCHEMA:
            conn.execute(text(ddl))


# --------------------------------------------------------------------------------------------
# NATS: one long-lived connection on its own event loop thread; steps publish through it.
# --------------------------------------------------------------------------------------------


class Nats:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self.thread.start()
        self.nc: Any = None

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self, url: str, wait_s: float = 30.0) -> None:
        async def go() -> Any:
            return await nats.connect(
                url,
                name="dbos-peer",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
            )

        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.nc = self._run(go(), timeout=10)
                return
            except Exception as error:  # noqa: BLE001 - retried until the deadline
                if time.monotonic() > deadline:
                    sys.exit(f"dbos peer: cannot connect to NATS at {url}: {error}")
                time.sleep(0.5)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        # Core NATS, fire-and-forget: the client buffers and flushes on its own loop.
        self._run(self.nc.publish(subject, payload, headers=headers), timeout=5)

    def close(self) -> None:
        if self.nc is not None:
            try:
                self._run(self.nc.drain(), timeout=3)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)


bus = Nats()
gateway = httpx.Client(
    base_url=GATEWAY_URL,
    timeout=CHARGE_TIMEOUT,
    limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
)


# --------------------------------------------------------------------------------------------
# Steps and transactions.
# --------------------------------------------------------------------------------------------


def _publish(subject: str, order_id: str, correlation_id: str, data: dict) -> str:
    """Publishes one orderflow envelope (core NATS) and returns its event id."""
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id,
        "type": subject,
        "version": "v1",
        "occurred_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "order_id": order_id,
        "correlation_id": correlation_id,
        "causation_id": None,
        "data": data,
    }
    bus.publish(
        subject,
        json.dumps(envelope, separators=(",", ":")).encode(),
        {CORRELATION_HEADER: correlation_id},
    )
    return event_id


@DBOS.step(retries_allowed=True, max_attempts=20, interval_seconds=0.5, backoff_rate=1.0)
def publish_event(subject: str, order_id: str, correlation_id: str, data: dict) -> str:
    """The saga's outcome event. A step, because it is a side effect: after a crash between the
    publish and its checkpoint it is published again (at least once, as orderflow's relay does).
    Retried while the NATS connection is closed (nats-py buffers during a reconnect)."""
    return _publish(subject, order_id, correlation_id, data)


def _lines(items: list[dict]) -> list[tuple[str, int]]:
    """Quantities per product, in product order (a fixed lock order on PostgreSQL)."""
    merged: dict[str, int] = {}
    for item in items:
        merged[item["product_id"]] = merged.get(item["product_id"], 0) + int(item["quantity"])
    return sorted(merged.items())


@ds.transaction(isolation_level=TX_ISOLATION)
def reserve_stock(order_id: str, customer_id: str, correlation_id: str, items: list[dict]) -> dict:
    """All-or-nothing: decrements every line's available and increments its reserved in one
    transaction, or changes nothing and records the order as cancelled."""
    session = ds.sql_session()
    lines = _lines(items)
    inserted = session.execute(
        text(
            "INSERT INTO orders (order_id, customer_id, correlation_id, state, lines) "
            "VALUES (:id, :customer, :correlation, 'reserving', :lines) "
            "ON CONFLICT (order_id) DO NOTHING"
        ),
        {
            "id": order_id,
            "customer": customer_id,
            "correlation": correlation_id,
            "lines": json.dumps(lines),
        },
    ).rowcount
    if inserted == 0:
        # Already decided by an earlier run of this step: answer what it decided.
        state, reason, total = session.execute(
            text("SELECT state, reason, total_cents FROM orders WHERE order_id = :id"),
            {"id": order_id},
        ).one()
        if state == "cancelled" and reason in ("insufficient_stock", "unknown_product"):
            return {"ok": False, "reason": reason}
        return {"ok": True, "total_cents": int(total)}

    total = 0
    taken: list[tuple[str, int]] = []
    failure: Optional[str] = None
    for product_id, quantity in lines:
        row = session.execute(
            text(
                "UPDATE products SET available = available - :q, reserved = reserved + :q "
                "WHERE product_id = :p AND available >= :q RETURNING price_cents"
            ),
            {"p": product_id, "q": quantity},
        ).first()
        if row is None:
            exists = session.execute(
                text("SELECT 1 FROM products WHERE product_id = :p"), {"p": product_id}
            ).first()
            failure = "insufficient_stock" if exists else "unknown_product"
            break
        taken.append((product_id, quantity))
        total += int(row[0]) * quantity

    if failure is not None:
        # Undo this transaction's own decrements (the rows are still locked by it).
        for product_id, quantity in taken:
            session.execute(
                text(
                    "UPDATE products SET available = available + :q, reserved = reserved - :q "
                    "WHERE product_id = :p"
                ),
                {"p": product_id, "q": quantity},
            )
        session.execute(
            text("UPDATE orders SET state = 'cancelled', reason = :r WHERE order_id = :id"),
            {"r": failure, "id": order_id},
        )
        return {"ok": False, "reason": failure}

    session.execute(
        text("UPDATE orders SET state = 'reserved', total_cents = :t WHERE order_id = :id"),
        {"t": total, "id": order_id},
    )
    return {"ok": True, "total_cents": total}


@ds.transaction(isolation_level=TX_ISOLATION)
def confirm_order(order_id: str, items: list[dict]) -> bool:
    """reserved -> sold, once: a no-op unless the order is still `reserved`."""
    session = ds.sql_session()
    moved = session.execute(
        text("UPDATE orders SET state = 'confirmed' WHERE order_id = :id AND state = 'reserved'"),
        {"id": order_id},
    ).rowcount
    if moved:
        for product_id, quantity in _lines(items):
            session.execute(
                text(
                    "UPDATE products SET reserved = reserved - :q, sold = sold + :q "
                    "WHERE product_id = :p"
                ),
                {"p": product_id, "q": quantity},
            )
    return bool(moved)


@ds.transaction(isolation_level=TX_ISOLATION)
def release_stock(order_id: str, items: list[dict], reason: str) -> bool:
    """The compensation: reserved -> available, once: a no-op unless the order is `reserved`."""
    session = ds.sql_session()
    moved = session.execute(
        text(
            "UPDATE orders SET state = 'cancelled', reason = :r "
            "WHERE order_id = :id AND state = 'reserved'"
        ),
        {"r": reason, "id": order_id},
    ).rowcount
    if moved:
        for product_id, quantity in _lines(items):
            session.execute(
                text(
                    "UPDATE products SET available = available + :q, reserved = reserved - :q "
                    "WHERE product_id = :p"
                ),
                {"p": product_id, "q": quantity},
            )
    return bool(moved)


class GatewayUnavailable(Exception):
    """5xx, 429, a timeout or no connection: retry with the same Idempotency-Key."""


@DBOS.step(
    retries_allowed=True,
    max_attempts=CHARGE_ATTEMPTS,
    interval_seconds=CHARGE_FIRST_WAIT_S,
    backoff_rate=2.0,
    should_retry=lambda error: isinstance(error, GatewayUnavailable),
)
def charge_payment(order_id: str, amount_cents: int, payment_method: str) -> str:
    """`charged`, `declined`, or `rejected` (a 4xx that is neither: not worth retrying)."""
    try:
        response = gateway.post(
            "/v1/charges",
            headers={"Idempotency-Key": order_id},
            json={
                "amount_cents": amount_cents,
                "payment_method": payment_method,
                "order_id": order_id,
            },
        )
    except httpx.HTTPError as error:
        raise GatewayUnavailable(f"charge {order_id}: {error!r}") from None
    if response.status_code == 200:
        return "charged"
    if response.status_code == 402:
        return "declined"
    if response.status_code >= 500 or response.status_code == 429:
        raise GatewayUnavailable(f"charge {order_id}: HTTP {response.status_code}")
    log.warning("charge %s rejected: HTTP %s %s", order_id, response.status_code, response.text)
    return "rejected"


@DBOS.step(retries_allowed=True, max_attempts=120, interval_seconds=1.0, backoff_rate=1.0)
def refund_if_charged(order_id: str) -> bool:
    """After the charge retries ran out, a call may still have charged: find it by key, refund it."""
    charges = gateway.get("/v1/charges", params={"idempotency_key": order_id})
    charges.raise_for_status()
    for charge in charges.json():
        if charge.get("status") == "succeeded" and not charge.get("refunded"):
            refund = gateway.post(
                "/v1/refunds",
                headers={"Idempotency-Key": f"refund-{order_id}"},
                json={"charge": charge["id"]},
            )
            refund.raise_for_status()
            return True
    return False


@DBOS.workflow()
def order_saga(order_id: str, correlation_id: str, order: dict) -> str:
    items = order["items"]
    reservation = reserve_stock(order_id, order["customer_id"], correlation_id, items)
    if not reservation["ok"]:
        reason = reservation["reason"]
        publish_event("orders.cancelled", order_id, correlation_id, {"reason": reason})
        return reason
    total = reservation["total_cents"]
    try:
        outcome = charge_payment(order_id, total, order["payment_method"])
    except dbos_error.DBOSMaxStepRetriesExceeded:
        refund_if_charged(order_id)
        outcome = "unavailable"
    if outcome == "charged":
        confirm_order(order_id, items)
        publish_event("orders.confirmed", order_id, correlation_id, {"total_cents": total})
        return "confirmed"
    reason = "payment_declined" if outcome == "declined" else "payment_unavailable"
    release_stock(order_id, items, reason)
    publish_event("orders.cancelled", order_id, correlation_id, {"reason": reason})
    return reason


# Outside a workflow a datasource transaction is a plain SQLAlchemy transaction (no checkpoint).
@ds.transaction(isolation_level=TX_ISOLATION)
def put_product(product_id: str, name: str, price_cents: int, stock: int) -> tuple[dict, bool]:
    session = ds.sql_session()
    created = session.execute(
        text(
            "INSERT INTO products (product_id, name, price_cents, available, reserved, sold) "
            "VALUES (:p, :n, :c, :s, 0, 0) ON CONFLICT (product_id) DO NOTHING"
        ),
        {"p": product_id, "n": name, "c": price_cents, "s": stock},
    ).rowcount
    if not created:
        # Replace name, price and available stock; reserved and sold belong to orders.
        session.execute(
            text(
                "UPDATE products SET name = :n, price_cents = :c, available = :s "
                "WHERE product_id = :p"
            ),
            {"p": product_id, "n": name, "c": price_cents, "s": stock},
        )
    row = session.execute(
        text(
            "SELECT product_id, name, price_cents, available, reserved, sold "
            "FROM products WHERE product_id = :p"
        ),
        {"p": product_id},
    ).one()
    return dict(row._mapping), bool(created)


@ds.transaction(isolation_level=TX_ISOLATION)
def list_products() -> list[dict]:
    rows = ds.sql_session().execute(
        text(
            "SELECT product_id, name, price_cents, available, reserved, sold "
            "FROM products ORDER BY product_id"
        )
    )
    return [dict(row._mapping) for row in rows]


# --------------------------------------------------------------------------------------------
# HTTP API (sync handlers: FastAPI runs them on its thread pool, where DBOS's sync API belongs).
# --------------------------------------------------------------------------------------------

app = FastAPI(title="orderflow DBOS peer", docs_url=None, redoc_url=None, openapi_url=None)


class ProductIn(BaseModel):
    name: str = Field(min_length=1)
    price_cents: int = Field(ge=0)
    stock: int = Field(ge=0)


class Line(BaseModel):
    product_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class OrderIn(BaseModel):
    customer_id: str = Field(min_length=1)
    items: list[Line] = Field(min_length=1)
    payment_method: str = Field(min_length=1)


@app.get("/health/ready")
def ready() -> JSONResponse:
    if bus.connected:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "nats disconnected"}, status_code=503)


@app.put("/products/{product_id}")
def put_product_endpoint(product_id: str, product: ProductIn) -> JSONResponse:
    row, created = put_product(product_id, product.name, product.price_cents, product.stock)
    return JSONResponse(row, status_code=201 if created else 200)


@app.get("/products")
def get_products() -> JSONResponse:
    return JSONResponse(list_products())


def _correlation_id(request: Request) -> str:
    raw = request.headers.get("x-correlation-id", "")
    if 0 < len(raw) <= 128 and all(33 <= ord(c) <= 126 for c in raw):
        return raw
    return str(uuid.uuid4())


@app.post("/orders")
def post_order(order: OrderIn, request: Request) -> JSONResponse:
    order_id = str(uuid.uuid4())
    correlation_id = _correlation_id(request)
    # start_workflow returns once DBOS has written the workflow and its input to the system
    # database: from then on a crash only delays the order (DBOS recovers it on the next start).
    with SetWorkflowID(order_id):
        if QUEUE_CONCURRENCY > 0:
            DBOS.enqueue_workflow(
                ORDER_QUEUE, order_saga, order_id, correlation_id, order.model_dump()
            )
        else:
            DBOS.start_workflow(order_saga, order_id, correlation_id, order.model_dump())
    # orders.created once the order is accepted, as orderflow's relay publishes it: here, not as the
    # workflow's first step, so that time an accepted order waits for an executor thread counts in
    # the load generator's end-to-end latency. Fire-and-forget: the order is durable either way.
    try:
        _publish("orders.created", order_id, correlation_id, {})
    except Exception as error:  # noqa: BLE001 - the saga goes on; only this event is lost
        log.warning("orders.created for %s not published: %r", order_id, error)
    return JSONResponse({"order_id": order_id}, status_code=202)


# --------------------------------------------------------------------------------------------
# Main: as DBOS's FastAPI guidance has it, configure and launch DBOS, then run the server.
# --------------------------------------------------------------------------------------------


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    create_app_tables()
    # Before launch: recovered workflows publish as soon as DBOS launches.
    bus.connect(NATS_URL)

    config: DBOSConfig = {
        "name": "orderflow-dbos-peer",
        # A fixed version, so that a restart recovers the pending workflows of an earlier start
        # even if this file changed (DBOS recovers only workflows of its own application version).
        "application_version": "1",
        "system_database_url": DATABASE_URL,
        "sys_db_pool_size": SYS_DB_POOL,
        "log_level": os.environ.get("DBOS_PEER_LOG_LEVEL", "INFO"),
    }
    if MAX_THREADS > 0:
        config["max_executor_threads"] = MAX_THREADS
    if IS_SQLITE:
        config["system_database_engine"] = _sqlite_engine(DATABASE_URL, SYS_DB_POOL)
    DBOS(config=config)
    DBOS.launch()
    if QUEUE_CONCURRENCY > 0:
        DBOS.register_queue(
            ORDER_QUEUE, worker_concurrency=QUEUE_CONCURRENCY, polling_interval_sec=QUEUE_POLL_S
        )
    log.warning(
        "dbos peer: DBOS launched %.2fs after start; HTTP on 127.0.0.1:%s",
        time.monotonic() - _PROCESS_START,
        PORT,
    )

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=PORT,
            access_log=False,
            log_level="warning",
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=5,
        )
    )
    # uvicorn handles SIGTERM/SIGINT while it serves, then restores the previous handlers and raises
    # the signal again; these handlers make that second delivery a no-op, so the cleanup below runs
    # and the process exits 0 (a signal before uvicorn installs its own still stops the server).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: setattr(server, "should_exit", True))
    server.run()  # returns after SIGTERM/SIGINT, once in-flight requests are answered

    # Workflows still running are PENDING in the system database: the next start recovers them.
    try:
        DBOS.destroy(workflow_completion_timeout_sec=2)
    except Exception as error:  # noqa: BLE001 - shutting down anyway
        log.warning("dbos peer: destroy: %r", error)
    bus.close()
    gateway.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Executor threads may be sleeping between charge retries; do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
