"""The study room: the notebooks' parameters (:mod:`.params`), one module per notebook (``nbNN_<name>``: the
helpers of notebook NN and nothing else), plots (:mod:`.viz`), the papermill runner (:mod:`.notebooks`) and
the tiny tiers' reports (:mod:`.tier_report`)."""
