import pytest
from cli_helpers import WIDE
from typer.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=WIDE)
