"""Files: inputs read before a submit, outputs stored and verified (built on
:mod:`airflow_vibedream.client`; Airflow only for its object storage and S3 hook).

- :mod:`.inputs`: what an ``image`` may be, its header check, presigning an ``s3://`` input;
- :mod:`.sources`: a batch's source walked (folder, prefix, list), staging, the dataset's names;
- :mod:`.s3`: one S3 client per connection, listings;
- :mod:`.downloads`: SSRF-safe, bounded downloads;
- :mod:`.outputs`: where a prediction's outputs go and under which names;
- :mod:`.storage`: the atomic, verified write of each output (and of small text files);
- :mod:`.verify`: what an output must be (format, long edge, aspect ratio);
- :mod:`.resize`: an input already at the target's size, resized locally;
- :mod:`.beneath`: safe local I/O below a root (no link followed out of it).
"""
