"""What people look at rather than compute: pictures, tables and the files a run writes (kept out of core's maths)."""
