"""snp-service: train vision networks on Ray and measure their single-nodal performance (SNP).

Implements arXiv 2501.12900; ../shared/METHOD.md (copied into docs/METHOD.md) states the method.
"""

__version__ = "0.1.0"
