"""Every filename prefix stays inside its own folder (core.atomic_io.resolve_prefix)."""
import os

import pytest

from continual_concepts.core.atomic_io import FILE_MODE, atomic_write, next_free, resolve_prefix


@pytest.mark.parametrize("prefix,rel", [("", "memory"), (".", "memory"), ("  ", "memory"), ("./", "memory"),
                                        ("runs/", "runs/memory"), ("runs/.", "runs/memory"), ("a/b", "a/b"),
                                        ("a\\b", "a/b"), ("a//./b", "a/b"), ("my dog", "my dog")])
def test_prefix_resolves_inside_root(tmp_path, prefix, rel):
    assert resolve_prefix(tmp_path, prefix, "memory") == tmp_path.resolve() / rel


@pytest.mark.parametrize("prefix", ["..", "../x", "a/../../x", "a\\..\\..\\x", "/etc/x", "\\\\server\\share\\x",
                                    "C:\\x", "C:x", "c:/x", "...", "a/../b"])
def test_escaping_prefix_is_one_error_naming_the_input(tmp_path, prefix):
    with pytest.raises(ValueError, match="filename_prefix"):
        resolve_prefix(tmp_path, prefix, "memory")


def test_prefix_through_a_link_out_of_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leaves the output folder"):
        resolve_prefix(tmp_path / "root", "out/x", "memory")


def test_counter_is_free_for_every_file_of_a_set_and_files_are_readable(tmp_path):
    base = resolve_prefix(tmp_path, "m", "memory")
    (tmp_path / "sub").mkdir()
    (tmp_path / "m_00001.a").write_text("")
    (tmp_path / "sub" / "m_00002.b").write_text("")
    assert next_free([(base, ".a"), (tmp_path / "sub" / "m", ".b")]) == 3
    p = atomic_write(tmp_path / "f.bin", lambda tmp: open(tmp, "wb").close())
    assert os.stat(p).st_mode & 0o777 == FILE_MODE == 0o644
