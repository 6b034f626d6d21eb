"""Request validation gives the messages a user needs to fix their request."""

import pytest
from pydantic import ValidationError

from infergraph.deployments.errors import describe_validation_error
from infergraph.protocol.embeddings import MAX_INPUTS_PER_REQUEST, EmbeddingRequest


def test_string_and_list_inputs():
    assert EmbeddingRequest(model="m", input="hi").texts() == ["hi"]
    assert EmbeddingRequest(model="m", input=["a", "b"]).texts() == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "m", "input": []}, "input", "empty list"),
        ({"model": "m", "input": ["ok", "  "]}, "input", "input[1] is empty"),
        ({"model": "m", "input": [1, 2, 3]}, "input", "token arrays are not supported"),
        ({"model": "m", "input": 7}, "input", "string or a list of strings"),
        ({"input": "x"}, "model", "Field required"),
        ({"model": "m"}, "input", "Field required"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format", "'float' or 'base64'"),
        ({"model": "m", "input": ["x"] * (MAX_INPUTS_PER_REQUEST + 1)}, "input", "at most"),
    ],
)
def test_bad_bodies_explain_themselves(body, param, fragment):
    with pytest.raises(ValidationError) as err:
        EmbeddingRequest.model_validate(body)
    message, got_param = describe_validation_error(err.value)
    assert got_param == param
    assert fragment in message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": "x", "dimensions": "384"}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": True}, "dimensions"),
        ({"model": "m", "input": "x", "truncate": "yes"}, "truncate"),
    ],
)
def test_numbers_and_flags_are_not_coerced_from_strings_or_booleans(body, param):
    with pytest.raises(ValidationError) as err:
        EmbeddingRequest.model_validate(body)
    assert describe_validation_error(err.value)[1] == param


def test_rerank_and_llm_fields_are_strict_too():
    from infergraph.protocol.llm import ChatCompletionRequest
    from infergraph.protocol.rerank import RerankRequest

    with pytest.raises(ValidationError):
        RerankRequest.model_validate({"model": "m", "query": "q", "documents": ["a"], "top_n": "2"})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": "2"}
        )
