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
