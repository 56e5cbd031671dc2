"""The front door: what every transport (gRPC Speech, Converse, the OpenAI HTTP API) goes through.

    engine_client.py  the engine as front ends see it, and what a finished request means to its caller
    door.py           admission while draining, voice lookup, submission, a response's delivery
    voices.py         the one voice lookup (a stored voice by name, then a speaker or OpenAI's names)
    delivery.py       one response's audio from the engine to the wire: encoding off the event loop,
                      flow control, timings, metrics, the final summary

Transports translate their wire format into SynthesisParams, call the door, and frame what the
delivery yields; errors are domain exceptions, mapped to a gRPC and an HTTP status in one table
(server/errors.py). Torch-free.
"""
