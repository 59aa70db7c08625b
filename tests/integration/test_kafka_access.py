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
    with caplog.at_level(logging.ERROR, logger="kafka"):
        with pytest.raises(KafkaError):
            consumer = KafkaConsumer(**wrong, request_timeout_ms=5000)
            consumer.topics()
    # the broker's own answer, as kafka-python logged it
    assert any("SaslAuthenticationFailedError" in r.getMessage() or "Authentication failed" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
