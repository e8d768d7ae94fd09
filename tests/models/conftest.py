import pytest

from tests.parallel._util import single_rank


@pytest.fixture(scope="module")
def layouts():
    """(large, small) layouts of a one-rank gloo job in this process (both TP = PP = DP = 1)."""
    with single_rank() as pair:
        yield pair
