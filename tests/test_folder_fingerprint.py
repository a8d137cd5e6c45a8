"""Load Concept Images' change fingerprint: it moves when the folder's images change, and only then."""
import os

from continual_concepts.core.images import folder_fingerprint


def test_fingerprint_follows_added_rewritten_renamed_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("x")
    fp = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == fp
    (tmp_path / "notes.txt").write_text("not an image")
    assert folder_fingerprint(tmp_path) == fp
    seen = {fp}
    (tmp_path / "b.png").write_bytes(b"2")
    seen.add(folder_fingerprint(tmp_path))
    (tmp_path / "b.png").write_bytes(b"22")
    seen.add(folder_fingerprint(tmp_path))
    st = os.stat(tmp_path / "b.png")
    os.utime(tmp_path / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    seen.add(folder_fingerprint(tmp_path))
    (tmp_path / "b.png").rename(tmp_path / "c.png")
    seen.add(folder_fingerprint(tmp_path))
    assert len(seen) == 5
