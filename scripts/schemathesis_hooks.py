"""schemathesis hooks for scripts/test.sh (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


@schemathesis.check
def positive_data_acceptance_but_key_reuse(ctx, response, case):
    """The built-in positive_data_acceptance, except for one answer that depends on history, not
    on the request: an Idempotency-Key reused with another body is 422 (IETF
    draft-ietf-httpapi-idempotency-key-header), and generated keys repeat ("0", "00", ...)."""
    if response.status_code == 422 and response.headers.get("content-type") == ["application/problem+json"]:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if isinstance(problem, dict) and problem.get("type") == "/problems/idempotency-key-reused":
            return None
    return positive_data_acceptance(ctx, response, case)
