"""encode_answer(validate=False): the constructor's checks alone keep answers schema-valid."""

from __future__ import annotations

from hypothesis import given
from test_enrollment import PROPERTY, answers

from ztpki.protocol.enrollment import EnrollmentAnswer, decode_answer, encode_answer


@PROPERTY
@given(answers())
def test_ok_unvalidated_answer_is_schema_valid(answer: EnrollmentAnswer) -> None:
    data = encode_answer(answer, validate=False)
    assert data == encode_answer(answer)  # the same bytes as the validated encoding
    assert decode_answer(data) == answer  # and the (always validating) decoder accepts them
