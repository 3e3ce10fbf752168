"""The layout check fails on what it is there to catch (`make lint` runs this).

Each test writes a small crate into a temporary tree and runs the check there; one runs
it on the repository as it is. Standard library only:
`python3 -m unittest discover -s tests/layout`.
"""

import tempfile
import textwrap
import unittest
from pathlib import Path

import check

REPO = Path(__file__).resolve().parents[2]


class LayoutCheck(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        self.write("lambda/src/lib.rs", "pub mod a;\npub mod b;\npub mod c;\n")
        self.write("lambda/src/a.rs", "use crate::b::B;\npub struct A;\n")
        self.write("lambda/src/b.rs", "pub struct B;\n")
        self.write("lambda/src/c.rs", "pub struct C;\n")
        self.write("bench/src/main.rs", "fn main() {}\n")
        self.saved = dict(check.TOO_LONG_FOR_NOW)
        check.TOO_LONG_FOR_NOW.clear()

    def tearDown(self):
        check.TOO_LONG_FOR_NOW.clear()
        check.TOO_LONG_FOR_NOW.update(self.saved)
        self.tmp.cleanup()

    def write(self, name, text):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))

    def test_the_repository_as_it_is_passes(self):
        check.TOO_LONG_FOR_NOW.update(self.saved)
        self.assertEqual(check.problems(REPO), [])

    def test_a_crate_without_circles_or_long_files_passes(self):
        self.assertEqual(check.problems(self.root), [])

    def test_two_modules_using_each_other_are_named_as_a_circle(self):
        self.write("lambda/src/b.rs", "pub struct B;\nfn f() -> crate::a::A { crate::a::A }\n")
        self.assertEqual(
            check.problems(self.root),
            ["modules import each other in a circle: crate::a -> crate::b -> crate::a"],
        )

    def test_a_circle_through_a_grouped_use_and_a_folder_is_found(self):
        self.write("lambda/src/lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n")
        self.write("lambda/src/d/mod.rs", "mod e;\n")
        self.write("lambda/src/d/e.rs", "use crate::{c::C, a::{self, A as Aa}};\n")
        self.write("lambda/src/b.rs", "use super::d::e::*;\n")
        [problem] = check.problems(self.root)
        self.assertEqual(
            problem, "modules import each other in a circle: crate::a -> crate::b -> crate::d::e -> crate::a"
        )

    def test_a_parent_re_exporting_a_child_that_uses_the_parent_is_a_circle(self):
        self.write("lambda/src/c.rs", "mod inner;\npub use inner::Thing;\npub const LIMIT: u32 = 3;\n")
        self.write("lambda/src/c/inner.rs", "pub struct Thing([u8; super::LIMIT as usize]);\n")
        self.assertEqual(
            check.problems(self.root),
            ["modules import each other in a circle: crate::c -> crate::c::inner -> crate::c"],
        )

    def test_paths_in_comments_strings_and_test_modules_are_no_edges(self):
        self.write(
            "lambda/src/b.rs",
            """\
            // crate::a::A
            /* crate::a::A /* nested */ crate::a::A */
            pub const TEXT: &str = "crate::a::A";
            pub const RAW: &str = r#"crate::a::A "quoted""#;
            pub const QUOTE: char = '"';

            #[cfg(test)]
            mod tests {
                use crate::a::A;
            }
            """,
        )
        self.assertEqual(check.problems(self.root), [])

    def test_a_file_over_the_limit_is_named(self):
        self.write("lambda/src/c.rs", "pub struct C;\n" * (check.MAX_LINES + 1))
        self.assertEqual(
            check.problems(self.root),
            [f"lambda/src/c.rs has {check.MAX_LINES + 1} lines besides its tests (at most {check.MAX_LINES}): split it"],
        )

    def test_a_bench_file_over_the_limit_is_named(self):
        self.write("bench/src/main.rs", "fn main() {}\n" * (check.MAX_LINES + 1))
        [problem] = check.problems(self.root)
        self.assertTrue(problem.startswith("bench/src/main.rs has 601 lines"), problem)

    def test_the_trailing_test_module_does_not_count(self):
        tests = "#[cfg(test)]\nmod tests {\n" + "    fn t() {}\n" * 300 + "}\n"
        self.write("lambda/src/c.rs", "pub struct C;\n" * check.MAX_LINES + tests)
        self.assertEqual(check.problems(self.root), [])

    def test_a_test_module_with_code_after_it_counts(self):
        tests = "#[cfg(test)]\nmod tests {\n" + "    fn t() {}\n" * 300 + "}\n"
        self.write("lambda/src/c.rs", "pub struct C;\n" * 400 + tests + "pub struct D;\n")
        [problem] = check.problems(self.root)
        self.assertTrue(problem.startswith("lambda/src/c.rs has 704 lines"), problem)

    def test_a_file_that_is_wholly_a_test_module_is_not_counted_nor_in_the_graph(self):
        self.write("lambda/src/c.rs", "pub struct C;\n#[cfg(test)]\nmod tests;\n")
        self.write("lambda/src/c/tests.rs", "use crate::a::A;\n" + "fn t() {}\n" * (check.MAX_LINES + 1))
        self.write("lambda/src/a.rs", "use crate::b::B;\nuse crate::c::C;\npub struct A;\n")
        self.assertEqual(check.problems(self.root), [])

    def test_a_long_file_declared_without_cfg_test_is_counted(self):
        self.write("lambda/src/c.rs", "pub struct C;\nmod helpers;\n")
        self.write("lambda/src/c/helpers.rs", "fn t() {}\n" * (check.MAX_LINES + 1))
        [problem] = check.problems(self.root)
        self.assertTrue(problem.startswith("lambda/src/c/helpers.rs has 601 lines"), problem)

    def test_an_allowance_for_a_file_that_is_short_now_must_go(self):
        check.TOO_LONG_FOR_NOW["lambda/src/c.rs"] = "was long"
        [problem] = check.problems(self.root)
        self.assertIn("lambda/src/c.rs is 600 lines or fewer now: remove it from TOO_LONG_FOR_NOW", problem)

    def test_an_allowed_long_file_passes(self):
        check.TOO_LONG_FOR_NOW["lambda/src/c.rs"] = "being split"
        self.write("lambda/src/c.rs", "pub struct C;\n" * (check.MAX_LINES + 1))
        self.assertEqual(check.problems(self.root), [])


if __name__ == "__main__":
    unittest.main()
