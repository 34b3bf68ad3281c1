"""Send jobs: the public ways to ask for many communications at once (an API batch, a CSV file
in the back-office, `manage.py send_job`) and to follow them as one job. Everything they accept
goes through the pipeline's batch intake, by `services.job_items_submit`."""
