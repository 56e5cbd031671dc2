"""grpc.health.v1, server reflection and the Prometheus endpoint beside csm.v1."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from csm_wire import speech_pb2 as pb

from .harness import wait_for


def test_health_is_serving_after_warm_up(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "csm.v1.Speech"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lets_a_client_without_the_proto_call_the_service(server):
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "csm.v1.Speech" in database.get_services()
        # A fresh pool: nothing from csm_wire, only what the server describes.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("csm.v1.Speech")

        def call(method_name: str, streaming: bool, **fields):
            method = service.methods_by_name[method_name]
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            path = f"/{service.full_name}/{method.name}"
            make = channel.unary_stream if streaming else channel.unary_unary
            rpc = make(path, request_serializer=request_class.SerializeToString,
                       response_deserializer=response_class.FromString)
            return rpc(request_class(**fields), timeout=120)

        info = call("GetModelInfo", False)
        assert info.preset == "tiny" and info.sample_rate == 24_000
        responses = list(call("Synthesize", True, text="Reflected.", max_audio_ms=240))
        assert responses[-1].HasField("result") and responses[-1].result.frames > 0
        assert all(r.HasField("audio") for r in responses[:-1])


def test_metrics_expose_the_named_series_and_they_move(server, client):
    before = server.metrics()
    call = client.stream("Count me.", seed=7, max_audio_ms=400, timeout=120)
    chunks = list(call)
    assert len(chunks) >= 2, "need two chunks for an inter-chunk latency"

    reason = pb.FinishReason.Name(call.result.finish_reason).removeprefix("FINISH_REASON_").lower()
    finished = f'csm:request_success_total{{finished_reason="{reason}"}}'

    def counted():
        now = server.metrics()
        return now if now.get(finished, 0) > before.get(finished, 0) else None

    after = wait_for(counted, what=f"{finished} to count the request")
    for gauge in ("csm:num_requests_running", "csm:num_requests_waiting", "csm:slot_usage_perc"):
        assert gauge in after
    for counter in ("csm:time_to_first_audio_seconds_count", "csm:inter_chunk_latency_seconds_count",
                    "csm:engine_step_duration_seconds_count", "csm:frames_generated_total",
                    "csm:audio_seconds_generated_total"):
        assert after[counter] > before.get(counter, 0), counter
    ok = 'csm:grpc_requests_total{code="OK",method="csm.v1.Speech/Synthesize"}'
    assert after[ok] == before.get(ok, 0) + 1
    frames = after["csm:frames_generated_total"] - before.get("csm:frames_generated_total", 0)
    seconds = after["csm:audio_seconds_generated_total"] - before.get("csm:audio_seconds_generated_total", 0)
    assert frames >= call.result.frames and seconds == pytest.approx(frames * 0.08)
