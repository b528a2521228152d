from poller.cli import app

app(prog_name="spark-poller")
