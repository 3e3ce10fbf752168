"""The documentation check fails on what it is there to catch (`make lint` runs this).

Each test copies what the check reads into a temporary tree, breaks one thing, and runs
the check there. Standard library only: `python3 -m unittest discover -s tests/docs`.
"""

import re
import shutil
import tempfile
import unittest
from pathlib import Path

import check

REPO = Path(__file__).resolve().parents[2]


class DocsCheck(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        shutil.copytree(REPO / "lambda/src", self.root / "lambda/src")
        shutil.copytree(REPO / "docs", self.root / "docs")
        (self.root / "scripts").mkdir()
        for script in [*REPO.glob("scripts/*.sh"), *REPO.glob("scripts/*.ps1")]:
            shutil.copy(script, self.root / "scripts")
        for name in ("README.md", "openapi.yaml"):
            shutil.copy(REPO / name, self.root / name)

    def tearDown(self):
        self.tmp.cleanup()

    def edit_pages(self, old, new):
        for page in [self.root / "README.md", *(self.root / "docs").glob("*.md")]:
            page.write_text(re.sub(old, new, page.read_text()))

    def test_the_repository_as_it_is_passes(self):
        self.assertEqual(check.problems(self.root), [])

    def test_a_setting_the_service_reads_and_no_page_names_is_reported(self):
        self.edit_pages(r"\bVENDING_BLOCK_MAX\b", "THE_BLOCK_SETTING")
        self.assertEqual(
            check.problems(self.root),
            ["setting VENDING_BLOCK_MAX (read in lambda/src/config.rs) is named nowhere in README.md or docs/*.md"],
        )

    def test_a_setting_a_boot_script_reads_and_no_page_names_is_reported(self):
        self.edit_pages(r"\bVENDING_ONLINE_WAIT\b", "THE_ONLINE_WAIT")
        [problem] = check.problems(self.root)
        self.assertIn("setting VENDING_ONLINE_WAIT (read in scripts/bootstrap-", problem)

    def test_a_route_no_page_names_is_reported(self):
        self.edit_pages(r"HEAD /health", "HEAD of the health route")
        self.assertEqual(
            check.problems(self.root),
            ["route `HEAD /health` (openapi.yaml) is named nowhere in README.md or docs/*.md"],
        )

    def test_the_root_route_is_not_documented_by_a_longer_path(self):
        self.edit_pages(r"GET /(?![a-z])", "GET (root)")
        self.assertEqual(
            check.problems(self.root),
            ["route `GET /` (openapi.yaml) is named nowhere in README.md or docs/*.md"],
        )

    def test_a_module_missing_from_the_map_is_reported(self):
        (self.root / "lambda/src/aws/queues.rs").write_text("//! A new adapter.\n")
        self.assertEqual(
            check.problems(self.root),
            ["module lambda/src/aws/queues.rs is missing from the `# Layout` map in lambda/src/lib.rs"],
        )

    def test_a_map_entry_without_its_file_is_reported(self):
        (self.root / "lambda/src/sweep/stale.rs").unlink()
        self.assertEqual(
            check.problems(self.root),
            ["the `# Layout` map in lambda/src/lib.rs names lambda/src/sweep/stale.rs, which does not exist"],
        )

    def test_a_link_to_a_page_that_is_gone_is_reported(self):
        (self.root / "docs/performance.md").unlink()
        problems = check.problems(self.root)
        self.assertIn("README.md links to docs/performance.md: no such file", problems)

    def test_a_link_to_a_heading_that_is_gone_is_reported(self):
        page = self.root / "docs/operating.md"
        page.write_text(page.read_text().replace("## Running locally", "## Running it locally"))
        problems = check.problems(self.root)
        self.assertIn("docs/performance.md links to operating.md#running-locally: no such heading", problems)

    def test_the_openapi_routes_are_read_with_their_methods(self):
        routes = check.openapi_routes(self.root)
        self.assertIn("GET /activation", routes)
        self.assertIn("HEAD /health", routes)
        self.assertIn("GET /", routes)


if __name__ == "__main__":
    unittest.main()
