"""Which requests belong together (the affinity key) and whose cache a request may use (the
salt): keyed hashes computed in the API, never the user's text or id."""

from chalicelib import affinity
from chalicelib.auth import Principal
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.completions import CompletionRequest
from chalicelib.protocol.embeddings import EmbeddingRequest
from chalicelib.settings import Settings

S = Settings(affinity_key="k1", affinity_prefix_chars=64)
ALICE = Principal("alice-id", "alice")
BOB = Principal("bob-id", "bob", groups=frozenset({"team"}))


def chat(*turns: str, **kw: object) -> ChatCompletionRequest:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **kw})


def key(
    req: ChatCompletionRequest | CompletionRequest, who: Principal = ALICE, **kw: object
) -> str | None:
    return affinity.of_request(S, who, req, req.engine_body(), **kw).key  # type: ignore[arg-type]


def test_prompt_cache_key_names_the_conversation_whatever_the_prompt() -> None:
    a = key(chat("hello", prompt_cache_key="c1"))
    assert a == key(chat("something else entirely", prompt_cache_key="c1"))
    assert a != key(chat("hello", prompt_cache_key="c2"))
    assert a is not None and "c1" not in a and "alice" not in a


def test_the_key_depends_on_the_user_the_model_and_the_secret() -> None:
    req = chat("hello", prompt_cache_key="c1")
    assert key(req) != key(req, BOB)
    other_model = chat("hello", prompt_cache_key="c1")
    other_model.model = "m2"
    assert key(req) != key(other_model)
    other_secret = Settings(affinity_key="k2")
    assert key(req) != affinity.of_request(other_secret, ALICE, req, req.engine_body()).key


def test_the_session_header_names_the_conversation_when_the_body_does_not() -> None:
    assert key(chat("a"), session_id="s1") == key(chat("b"), session_id="s1")
    assert key(chat("a", prompt_cache_key="c"), session_id="s1") == key(
        chat("b", prompt_cache_key="c")
    )
    assert affinity.session_id({"X-Session-ID": " s1 "}) == "s1"
    assert affinity.session_id({"x-other": "1"}) is None


def test_without_a_name_the_turns_of_a_conversation_share_its_openings_key() -> None:
    first = key(chat("x" * 30))
    assert first == key(chat("x" * 30, "answer", "next question"))  # short or long
    assert first == key(chat("x" * 30, "a", "b", "c", "d" * 500))
    assert first != key(chat("y" * 30))
    long = key(chat("x" * 80))  # past the 64 characters hashed: the opening's first ones
    assert long == key(chat("x" * 90))
    system = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    opened = ChatCompletionRequest.model_validate({"model": "m", "messages": system})
    later = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [*system, {"role": "assistant", "content": "a"}]}
    )
    assert key(opened) == key(later)


def test_completions_prompts_have_a_prefix_key_and_embeddings_no_salt() -> None:
    c = CompletionRequest.model_validate({"model": "m", "prompt": "z" * 100})
    assert key(c) == key(CompletionRequest.model_validate({"model": "m", "prompt": "z" * 200}))
    e = EmbeddingRequest.model_validate({"model": "m", "input": "hi"})
    found = affinity.of_request(S, ALICE, e, e.engine_body())
    assert found == affinity.Affinity(None, None)
    assert found.body({"input": "hi"}) == {"input": "hi"}


def test_the_salt_is_per_user_or_per_listed_group_and_replaces_the_clients() -> None:
    shared = Settings(affinity_key="k1", cache_salt_groups=["team"])
    req = chat("hi", cache_salt="chosen-by-client")
    body, fields = affinity.prepare(S, ALICE, req)
    bob_body, _ = affinity.prepare(S, BOB, req)
    assert body["cache_salt"] not in ("chosen-by-client", bob_body["cache_salt"])
    assert fields == {"affinity": key(req)}
    carol = Principal("carol-id", "carol", groups=frozenset({"team"}))
    assert (
        affinity.prepare(shared, BOB, req)[0]["cache_salt"]
        == affinity.prepare(shared, carol, req)[0]["cache_salt"]
    )


def test_affinity_off_gives_no_key_but_still_a_salt() -> None:
    off = Settings(affinity_key="k1", affinity=False)
    body, fields = affinity.prepare(off, ALICE, chat("hi", prompt_cache_key="c"))
    assert fields == {} and body["cache_salt"]
