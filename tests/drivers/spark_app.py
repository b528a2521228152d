"""A Python driver that runs a Spark application (a SparkContext with an executor), then ends
as its first argument says: "ok", or "fail" (an exception after the application's work)."""

import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
print("rows:", spark.range(10).count(), flush=True)
spark.stop()
if len(sys.argv) > 1 and sys.argv[1] == "fail":
    raise RuntimeError("failed after the application's work")
