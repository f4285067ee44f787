"""rtrec: real-time recommender features and online learning on Apache Flink."""
