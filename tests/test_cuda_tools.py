"""SASS counting and tool lookup shared by kernel-report and the Marlin build check."""

from sglang_ampere.cuda_tools import SassCounts, sass_counts, total

CUOBJDUMP = """
	code for sm_86
		Function : kern_a
        /*0000*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0020*/                   STL.64 [R1+0x8], R2 ;
		Function : kern_b
        /*0000*/                   IMMA.16832.S8.S8 R4, R8, R12, R4 ;
        /*0010*/                   LDL R2, [R1+0x8] ;
        /*0020*/                   BPT.TRAP 0x1 ;
"""

NVDISASM = """
//--------------------- .text.kern_c --------------------------
	.section	.text.kern_c,"ax",@progbits
.text.kern_c:
        /*0000*/                   HMMA.1688.F32.TF32 R4, R8, R12, R4 ;
"""


def test_counts_per_kernel_in_both_listing_styles():
    c = sass_counts(CUOBJDUMP)
    assert c["kern_a"] == SassCounts(hmma=2, hmma_bf16=1, stl=1)
    assert c["kern_b"] == SassCounts(imma=1, ldl=1, traps=1)
    assert total(c) == SassCounts(hmma=2, hmma_bf16=1, imma=1, traps=1, ldl=1, stl=1)
    d = sass_counts(NVDISASM)
    assert d["kern_c"] == SassCounts(hmma=1) and d[""] == SassCounts()
