"""Messages the consumer cannot store are kept as rejects, and the records
around them are stored: a poison message never blocks its partition."""
from __future__ import annotations

import json
import uuid

from kafka import KafkaProducer

from tillflow import sample
from tillflow.messages import encode_transaction
from tillflow.record import Origin, Transaction
from support.pipeline import consume_until_idle, query, stored


def test_undecodable_and_database_refused_messages_become_rejects(env, migrated_db, running_kafka, topics):
    good = [
        Transaction(id=uuid.UUID(r.id), transaction_date=r.transaction_date, category=r.category,
                    name=r.name, quantity=r.quantity, amount_excl_tax=r.amount_excl_tax,
                    amount_inc_tax=r.amount_inc_tax, store_id="main")
        for r in sample.rows(3, seed=41)
    ]
    # Validated under another TAX_RATE (10%): the message is well formed, but the
    # database's tax rule (this consumer's 20%) refuses it.
    poison = {
        "schema_version": 1, "kind": "transaction", "id": "6f1c1f52-3c51-4bb3-a0a4-1f3c1b0f9e01",
        "transaction_date": "2026-01-05", "category": "SELL", "name": "Milk", "quantity": 1,
        "amount_excl_tax": "10.00", "amount_inc_tax": "11.00", "store_id": "main",
        "origin": {"source": "api", "ref": None, "line": None},
    }
    producer = KafkaProducer(bootstrap_servers=running_kafka.bootstrap_servers, acks="all")
    # One partition's worth of order: everything keyed alike lands together.
    key = b"same-partition"
    producer.send(topics.transactions, key=key, value=encode_transaction(good[0], Origin("csv", "a.csv", 2)))
    producer.send(topics.transactions, key=key, value=json.dumps(poison).encode())
    producer.send(topics.transactions, key=key, value=b"\xff not json at all")
    for tx in good[1:]:
        producer.send(topics.transactions, key=key, value=encode_transaction(tx, Origin("csv", "a.csv", 3)))
    producer.flush()
    producer.close()

    consume_until_idle(env)

    assert set(stored(migrated_db)) == {str(tx.id) for tx in good}
    rejects = query(migrated_db, "SELECT transaction_id, reasons FROM ingest.rejects ORDER BY kafka_offset")
    codes = [[r["code"] for r in reasons] for _, reasons in rejects]
    assert codes == [["database_refused"], ["undecodable"]]
    assert rejects[0][0] == poison["id"]
    assert "transactions_tax_rule_check" in rejects[0][1][0]["message"]
    assert rejects[1][0] == "same-partition"
