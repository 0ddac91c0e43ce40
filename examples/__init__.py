"""Example web apps that hand uploads to s3batch and serve them back from their batches."""
