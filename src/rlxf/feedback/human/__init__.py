"""Human feedback: ``rlxf annotate``, a small web app where people compare or rank answers.

    rlxf annotate users  database=sqlite:///labels.db add=[alice,bob]   # invite links
    rlxf annotate import database=sqlite:///labels.db files=[prefs.jsonl]
    rlxf annotate serve  database=sqlite:///labels.db labels_per_task=3
    rlxf annotate export database=sqlite:///labels.db out=labels/

Modules: ``store`` (SQLite: tasks, assignments, labels, accounts), ``auth`` (passwords,
cookies, CSRF), ``agreement`` (percent agreement, Fleiss' kappa, Krippendorff's alpha),
``importer``/``server``/``export``/``users`` (one command each: ``Config`` + ``run``) and
``app`` (the FastAPI routes and templates). Only ``server`` needs the ``annotate`` extra.
"""
