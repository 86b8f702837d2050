"""``lewm suite``: every task's recipe (collect, train, calibrate, tune, evaluate) and the results table."""
