"""A call that ends early (cancelled, deadline passed) frees its slot in the engine."""

from __future__ import annotations

import grpc
import pytest

from .harness import long_audio_ms, wait_for


def slots_in_use(client) -> int:
    return client.model_info(timeout=10).slots_in_use


def test_cancelling_mid_stream_frees_the_slot(server, client, model_info):
    before = server.metrics()
    call = client.stream("Stop me halfway.", seed=5, max_audio_ms=long_audio_ms(model_info), timeout=300)
    chunks = iter(call)
    next(chunks)
    next(chunks)
    assert slots_in_use(client) == 1
    call.cancel()
    wait_for(lambda: slots_in_use(client) == 0, what="the cancelled request's slot to be freed")

    cancelled = 'csm:request_success_total{finished_reason="cancelled"}'
    after = wait_for(lambda: (m := server.metrics()).get(cancelled, 0) > before.get(cancelled, 0) and m,
                     what=f"{cancelled} to count the request")
    code = 'csm:grpc_requests_total{code="CANCELLED",method="csm.v1.Speech/Synthesize"}'
    assert after.get(code, 0) == before.get(code, 0) + 1
    assert after["csm:num_requests_running"] == 0


def test_a_passed_deadline_frees_the_slot(client, model_info):
    call = client.stream("I will run out of time.", seed=5, max_audio_ms=long_audio_ms(model_info), timeout=1.5)
    with pytest.raises(grpc.RpcError) as ended:
        for _ in call:
            pass
    assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: slots_in_use(client) == 0, what="the timed-out request's slot to be freed")
