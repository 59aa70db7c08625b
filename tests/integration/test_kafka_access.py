"""Kafka with authentication and ACLs on the real stack: each refusal is the broker's own authorisation error,
and the tools say which principal lacked which right."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from mailroom.kafkautil import AccessRefused, client_config, producer, read_topic
from schemas.topics import topic_name


def test_finance_cannot_read_hr(pipeline_settings):
    finance = replace(pipeline_settings, kafka_principal="dept-finance")
    hr_topic = topic_name("dept_hr", pipeline_settings.topic_prefix)
    with pytest.raises(AccessRefused) as refused:
        read_topic(finance, hr_topic, timeout_s=2)
    assert isinstance(refused.value.cause, TopicAuthorizationFailedError)  # the broker's error
    assert str(refused.value).startswith(f"principal dept-finance may not Read topic {hr_topic}")
    assert read_topic(finance, topic_name("dept_finance", pipeline_settings.topic_prefix), timeout_s=2) == []  # its own: fine

    env = {**os.environ, **pipeline_settings.as_env(), "MAILROOM_KAFKA_PRINCIPAL": "dept-finance"}
    out = subprocess.run([sys.executable, "-m", "mailroom.cli", "inbox", "hr"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    assert f"principal dept-finance may not Read topic {hr_topic}" in said and "TopicAuthorizationFailedError" in said
    assert "Traceback" not in out.stderr


def test_a_department_cannot_publish_to_model_control(pipeline_settings):
    hr = replace(pipeline_settings, kafka_principal="dept-hr")
    control = topic_name("model_control", pipeline_settings.topic_prefix)
    kafka = producer(hr, max_block_ms=10000)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            kafka.send(control, key=b"text/champion", value=b"forged").get(timeout=20)
        kafka.send(topic_name("ground_truth", pipeline_settings.topic_prefix), value=b"x").get(timeout=20)  # what it may do
    finally:
        kafka.close()
    # the operator's tool as the department: refused with the principal and the right named
    env = {**os.environ, **pipeline_settings.as_env(), "MAILROOM_KAFKA_PRINCIPAL": "dept-hr"}
    out = subprocess.run([sys.executable, "-m", "mailroom.cli", "models", "retire", "text", "--slot", "challenger"], env=env,
                         capture_output=True, text=True, timeout=120)
    said = " ".join(out.stderr.split())
    assert out.returncode != 0 and "principal dept-hr may not" in said and control in said, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_an_unauthenticated_client_is_refused(stack, test_settings, caplog):
    with pytest.raises(KafkaError):  # no SASL at all: the broker hangs up
        KafkaConsumer(bootstrap_servers=test_settings.bootstrap_servers, request_timeout_ms=5000, api_version=(2, 8),
                      metadata_max_age_ms=5000).topics()
    wrong = {**client_config(test_settings, "dept-finance"), "sasl_plain_password": "not-the-password"}

    def said_so() -> bool:  # the broker's own answer, as kafka-python logged it
        return any("SaslAuthenticationFailedError" in r.getMessage() or "Authentication failed" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.ERROR, logger="kafka"):
        for _ in range(10):  # on a busy machine a connection may drop before the broker's answer is read: ask again
            with pytest.raises(KafkaError):
                KafkaConsumer(**wrong, request_timeout_ms=5000).topics()
            if said_so():
                break
    assert said_so(), [r.getMessage() for r in caplog.records]


def _acls_on(settings, named) -> list:
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePatternFilter, ResourceType

    from mailroom.kafkautil import admin

    client = admin(settings)
    try:
        acls, _ = client.describe_acls(ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                                                 ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)))
    finally:
        client.close()
    return [acl for acl in acls if named(acl.resource_pattern.resource_name)]


def _none_left(settings, named, timeout_s: float = 15.0) -> bool:
    """True once no ACL on such a resource is left (the broker applies a deletion through its metadata log, a moment later)."""
    import time

    deadline = time.monotonic() + timeout_s
    while _acls_on(settings, named):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_grants_go_with_their_topics_and_prefixes(stack, test_settings):
    """The tests' grants do not pile up in the broker's metadata: deleting a topic revokes its ACLs, and `revoke`
    removes a topic prefix's (topics, consumer groups, transactional ids) and nothing else."""
    import uuid

    from mailroom.kafkautil import delete_topics, ensure_topics, grant_topics, revoke
    from mailroom.stack import Kafka

    topic = f"test.acl.{uuid.uuid4().hex[:8]}"
    ensure_topics(test_settings, [topic])
    grant_topics(test_settings, [topic], ["router", "scoring"])
    assert len(_acls_on(test_settings, lambda name: name == topic)) == 2 * 3  # two principals x READ, WRITE, DESCRIBE
    delete_topics(test_settings, [topic])
    assert _none_left(test_settings, lambda name: name == topic)

    prefix = f"t{uuid.uuid4().hex[:8]}."
    Kafka(replace(test_settings, topic_prefix=prefix)).create_topics()
    before = len(_acls_on(test_settings, lambda name: not name.startswith(prefix)))
    assert len(_acls_on(test_settings, lambda name: name.startswith(prefix))) > 20  # every role's topics, groups, ids
    assert revoke(test_settings, lambda name: name.startswith(prefix)) > 20
    assert _none_left(test_settings, lambda name: name.startswith(prefix))
    assert len(_acls_on(test_settings, lambda name: not name.startswith(prefix))) == before  # the others are untouched
