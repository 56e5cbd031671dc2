"""csm.v1.Speech/Converse: a conversation's call, torch-free (the engine keeps its context:
server/engine/sessions.py)."""
