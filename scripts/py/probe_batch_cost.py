"""What one group-commit batch costs the server, write by write (docs/benchmarks.md).

Replays the exact writes of a batch of 64 transfers out of one wallet (with the indexes Coffer
creates) against the server named by MONGODB_URI, ten times, and prints the milliseconds of each
step; then the same with a balances collection that has only `_id`, and with two outbox rows per
transfer instead of four. Cleans up its database.

    MONGODB_URI='mongodb://127.0.0.1:27217/?directConnection=true' .venv/bin/python scripts/py/probe_batch_cost.py
"""

import itertools
import os
import time
import uuid

import pymongo
from bson.decimal128 import Decimal128

BATCH = 64
ROUNDS = 10
INDEXES = {
    "transactions": [
        ([("ledger_key", 1)], {"unique": True}),
        ([("participants", 1), ("_id", -1)], {}),
        ([("kind", 1), ("state", 1), ("_id", 1)], {}),
    ],
    "ledger_entries": [([("account_id", 1), ("_id", -1)], {}), ([("transaction_id", 1)], {})],
    "outbox": [
        ([("partition", 1), ("seq", 1)], {"unique": True}),
        ([("partition", 1), ("retry_at", 1)], {}),
        ([("user_id", 1), ("dead_lettered_at", 1), ("_id", 1)], {}),
        ([("dead_lettered_at", 1)], {}),
    ],
    # The same outbox with the two indexes of rare rows (retrying, dead-lettered) partial.
    "outbox_partial": [
        ([("partition", 1), ("seq", 1)], {"unique": True}),
        ([("partition", 1), ("retry_at", 1)], {"partialFilterExpression": {"retry_at": {"$exists": True}}}),
        ([("user_id", 1), ("dead_lettered_at", 1), ("_id", 1)], {}),
        ([("dead_lettered_at", 1)], {"partialFilterExpression": {"dead_lettered_at": {"$exists": True}}}),
    ],
    "idempotency_keys": [([("created_at", 1)], {"expireAfterSeconds": 86400})],
    "wallets": [([("owner_key", 1)], {"unique": True}), ([("user_id", 1), ("_id", 1)], {})],
}
ONE = Decimal128("1")
SEQ = itertools.count()


def prepare(db):
    for collection, indexes in INDEXES.items():
        for keys, options in indexes:
            db[collection].create_index(keys, **options)
    wallets = [
        {
            "_id": f"w{i}",
            "owner_key": f"o{i}",
            "user_id": f"u{i}",
            "available": Decimal128("1000000"),
            "version": 0,
        }
        for i in range(200)
    ]
    db.wallets.insert_many(wallets)
    db.balances.insert_many([{"_id": w["_id"], "available": w["available"], "version": 0} for w in wallets])


def batch(client, db, steps, accounts="wallets", outbox_rows=4, outbox="outbox"):
    def timed(name, write):
        started = time.perf_counter()
        write()
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - started

    ids = [f"w{i}" for i in range(BATCH + 1)]
    txs = [str(uuid.uuid4()) for _ in range(BATCH)]
    with client.start_session() as session, session.start_transaction():
        timed("find", lambda: list(db[accounts].find({"_id": {"$in": ids}}, session=session)))
        updates = [{"q": {"_id": i}, "u": {"$inc": {"available": ONE, "version": 1}}} for i in ids]
        timed("update", lambda: db.command({"update": accounts, "updates": updates}, session=session))
        records = [
            {
                "_id": tx,
                "ledger_key": tx,
                "participants": ["u0", f"u{n + 1}"],
                "kind": "transfer",
                "state": "confirmed",
            }
            for n, tx in enumerate(txs)
        ]
        timed("records", lambda: db.transactions.insert_many(records, session=session))
        entries = [
            {"_id": str(uuid.uuid4()), "transaction_id": tx, "account_id": a, "amount": ONE}
            for tx in txs
            for a in ("w0", "w1")
        ]
        timed("entries", lambda: db.ledger_entries.insert_many(entries, session=session))
        events = [
            {
                "_id": str(uuid.uuid4()),
                "partition": n % 16,
                "seq": next(SEQ),
                "user_id": "u1",
                "subject": "w1",
            }
            for n in range(BATCH * outbox_rows)
        ]
        timed("outbox", lambda: db[outbox].insert_many(events, session=session))
        keys = [{"_id": tx, "fingerprint": "f" * 64, "response": {"body": b"x" * 400}} for tx in txs]
        timed("idempotency", lambda: db.idempotency_keys.insert_many(keys, session=session))
        started = time.perf_counter()
    steps["commit"] = steps.get("commit", 0.0) + time.perf_counter() - started


def main():
    uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/?directConnection=true")
    client = pymongo.MongoClient(uri)
    db = client[f"batch_probe_{uuid.uuid4().hex[:6]}"]
    try:
        prepare(db)
        variants = [
            ("as written today", {}),
            ("balances without secondary indexes", {"accounts": "balances"}),
        ]
        variants.append(
            ("outbox: indexes of retrying and dead-lettered rows partial", {"outbox": "outbox_partial"})
        )
        variants.append(("both of the above", {"outbox": "outbox_partial", "accounts": "balances"}))
        variants.append(("two outbox rows per transfer", {"outbox_rows": 2}))
        # Rounds take turns between the variants: the server slows as its collections grow,
        # which would otherwise weigh on the later variants.
        steps = {label: {} for label, _ in variants}
        elapsed = {label: 0.0 for label, _ in variants}
        for _ in range(ROUNDS):
            for label, options in variants:
                started = time.perf_counter()
                batch(client, db, steps[label], **options)
                elapsed[label] += time.perf_counter() - started
        for label, _ in variants:
            per_batch = elapsed[label] / ROUNDS * 1000
            rate = BATCH / per_batch * 1000
            print(
                f"{label}: {per_batch:.1f} ms per batch of {BATCH} = {per_batch / BATCH:.2f} ms/transfer ({rate:.0f}/s)"
            )
            print(
                "   "
                + "  ".join(f"{name} {total / ROUNDS * 1000:.1f}" for name, total in steps[label].items())
            )
    finally:
        client.drop_database(db.name)


if __name__ == "__main__":
    main()
