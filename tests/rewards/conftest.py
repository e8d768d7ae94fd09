import pytest

from megatron_codistill.rewards import VerifierPool


@pytest.fixture(scope="package")
def pool():
    """Two verifier workers shared by the reward tests (starting one costs seconds of imports)."""
    with VerifierPool(num_workers=2, timeout_s=5.0) as p:
        p.wait_ready()
        yield p
