"""The priors room: feature statistics of un-cached sampling and their file (:mod:`.stats`), their extraction
(:mod:`.extraction`), GOC's queue replayed on them (:mod:`.replay`), and the inflection-aware steps and
least-squares w (:mod:`.auto`)."""
