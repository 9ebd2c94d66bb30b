"""Curated mutation testing: hand-written bugs (`mutants.MUTANTS`) that the suite must catch.

    python -m tests.mutation                   # every mutant, kill table to runs/mutation/
    python -m tests.mutation --only tasks-valid-ignored,optim-accum-sum
    python -m tests.mutation --docs docs/testing.md   # also rewrite the table in the docs

Each mutant names a file, an exact snippet of it, its replacement and the tests that should
fail. The runner copies the repository (tracked and untracked, not ignored, files) to a
temporary directory once, checks that the named tests pass there unmutated, then applies one
mutant at a time to the copy, runs its tests, and restores the file: the working tree is never
touched. A mutant is *killed* when its tests fail (or time out), *survived* when they pass.
"""
