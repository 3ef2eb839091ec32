"""Model checking of planners against boundary properties, with Storm (stormpy >= 2.0).

``CountModel`` (counted transitions) -> ``ExplicitModel`` (DTMC under a policy, or MDP) ->
validated (:mod:`~planning.verify.validate`) -> checked by Storm (:mod:`~planning.verify.storm`);
Clopper-Pearson interval models give robust upper bounds (:mod:`~planning.verify.intervals`);
:mod:`~planning.verify.reference` is an independent numpy implementation used to check the checker.
"""
