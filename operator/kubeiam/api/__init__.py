"""The API types of the three kinds; the CRD generator reads only these."""
