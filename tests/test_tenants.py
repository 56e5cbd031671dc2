"""Tenants without a server: the tokens file's two forms and its mistakes (never quoting a
token), stable tenant ids that are not the token, one directory per tenant that no id can leave,
and prefix-cache chains that no two tenants share."""

from __future__ import annotations

import pytest

from server.auth import BearerTokens, load_tokens, parse_entry
from server.engine.prefix_cache import chain_hashes
from server.errors import Unauthenticated
from server.tenants import DEFAULT_TENANT, token_tenant, valid_tenant_name
from server.voices.tenants import TenantVoices, tenant_directory

from test_voices import registry, segments


def test_a_token_alone_is_a_tenant_of_its_own_and_a_named_tenant_has_many_tokens():
    assert parse_entry("alice:k-1") == ("alice", "k-1")
    assert parse_entry("  alice:k:2  ") == ("alice", "k:2")  # only the first ':' separates
    tenant, token = parse_entry("s3cret-Token_42")
    assert token == "s3cret-Token_42" and tenant == token_tenant(token) and token not in tenant
    assert tenant.startswith("token-") and len(tenant) == len("token-") + 16
    assert token_tenant("s3cret-Token_42") == tenant != token_tenant("s3cret-Token_43")  # stable, distinct
    tokens = BearerTokens(["alice:k-1", "alice:k-2", "bob:k-3", "lonely"])
    assert tokens.tenants == {"alice", "bob", token_tenant("lonely")}
    assert [tokens.tenant(f"Bearer {t}") for t in ("k-1", "k-2", "k-3", "lonely")] == [
        "alice", "alice", "bob", token_tenant("lonely")]
    assert tokens.tenant("bearer  k-3 ") == "bob"
    for header in (None, "Bearer", "Basic k-1", "Bearer alice:k-1", "Bearer K-1"):
        with pytest.raises(Unauthenticated):
            tokens.tenant(header)
    assert tokens.problem("Bearer k-1") is None and "not valid" in tokens.problem("Bearer nope")


def test_the_tokens_file_and_the_environment_list(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# ops\nalice:k-1\n\nalice:k-2\n  lonely  \nbob:k-3\n")
    assert load_tokens(str(path), "bob:k-4, lonely,") == ("alice:k-1", "alice:k-2", "lonely", "bob:k-3", "bob:k-4")
    assert BearerTokens(load_tokens(str(path), None)).tenant("Bearer k-2") == "alice"


@pytest.mark.parametrize(("line", "message"), [
    ("Alice:very-secret", "tenant name"),  # lowercase only: one directory per name on every filesystem
    ("token-0123456789abcdef:very-secret", "tenant name"),  # reserved for tokens listed alone
    ("../up:very-secret", "tenant name"),
    ("al/ice:very-secret", "tenant name"),
    (":very-secret", "tenant name"),
    ("alice:", "no token"),
    ("very secret", "space"),
    ("alice:very\tsecret", "space"),
    ("alice:vérysecret", "printable ASCII"),
])
def test_a_bad_entry_stops_the_server_naming_its_line_not_its_token(tmp_path, line, message):
    path = tmp_path / "tokens"
    path.write_text(f"alice:fine\n{line}\n")
    with pytest.raises(ValueError, match=message) as refused:
        load_tokens(str(path), None)
    assert "line 2" in str(refused.value) and "secret" not in str(refused.value)
    with pytest.raises(ValueError, match="CSM_AUTH_TOKENS item 2"):
        load_tokens(None, f"alice:fine,{line}")
    with pytest.raises(ValueError):
        BearerTokens([line])


def test_a_token_belongs_to_one_tenant(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("alice:shared-secret\nbob:shared-secret\n")
    with pytest.raises(ValueError, match="line 2, gives a token to a second tenant") as refused:
        load_tokens(str(path), None)
    assert "shared-secret" not in str(refused.value)
    with pytest.raises(ValueError, match="second tenant"):
        load_tokens(None, "shared-secret,alice:shared-secret")
    with pytest.raises(ValueError, match="second tenant"):
        BearerTokens(["alice:shared-secret", "shared-secret"])
    assert load_tokens(None, "alice:x-1,alice:x-1") == ("alice:x-1",)  # a repeat is not a conflict


def test_tenant_names_follow_the_voice_name_rule():
    assert valid_tenant_name("acme-prod_2") and valid_tenant_name("0")
    for name in ("", "Acme", "a.b", "a b", "-a", "x" * 65, "token-abc", "ä"):
        assert not valid_tenant_name(name), name


def test_each_tenant_has_a_directory_that_no_id_leaves(tmp_path):
    assert tenant_directory(tmp_path, DEFAULT_TENANT) == tmp_path  # a server without tokens: as before tenants
    assert tenant_directory(tmp_path, "alice") == tmp_path / "tenants" / "alice"
    for bad in ("..", "../alice", "a/b", "/etc", "Alice", "a\0b"):
        with pytest.raises(ValueError):
            tenant_directory(tmp_path, bad)


def test_tenant_registries_are_namespaces_with_quotas_of_their_own(tmp_path):
    voices = TenantVoices(registry(tmp_path, max_voices=1))
    alice, bob, root = voices.of("alice"), voices.of("bob"), voices.of(DEFAULT_TENANT)
    assert voices.of("alice") is alice and root.store.directory == tmp_path
    alice.create("narrator", segments(tone=3.0))
    bob.create("narrator", segments(tone=9.0))  # the same name, another tenant, its own quota
    assert alice.get("narrator").content_hash != bob.get("narrator").content_hash
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*.safetensors"))] == [
        "tenants/alice/narrator.safetensors", "tenants/bob/narrator.safetensors"]
    assert root.page().voices == [] and root.usage().voices == 0  # the tenants directory is no voice
    assert bob.delete("narrator") and alice.get("narrator").name == "narrator"


def test_no_two_tenants_share_a_prefix_chain():
    data = [b"voice", b"turn"]
    default, alice, bob = chain_hashes(data), chain_hashes(data, "alice"), chain_hashes(data, "bob")
    assert default == chain_hashes(data, DEFAULT_TENANT)
    assert len({default[0], alice[0], bob[0]}) == 3 and len({default[1], alice[1], bob[1]}) == 3
    assert chain_hashes(data, "alice") == alice
