/* A program outside the tree, built against an installed xattn. */
#include <xattn.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
    /* one query, two keys: softmax([0, 0]) averages the values */
    float q[1] = {0}, k[2] = {1, -1}, v[2] = {2, 4}, out[1];
    xattn_sdpa_params p;
    xattn_sdpa_init(&p);
    p.B = p.H = p.I = 1;
    p.J = 2;
    p.dh = p.dv = 1;
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.q_si = 1;
    p.k_sj = 1;
    p.v_sj = 1;
    p.o_si = 1;
    if (xattn_sdpa(&p) != XATTN_OK) {
        fprintf(stderr, "%s\n", xattn_last_error());
        return 1;
    }
    printf("xattn %s (%s): %g\n", xattn_version(), xattn_isa(), out[0]);
    return fabsf(out[0] - 3.0f) < 1e-6f ? 0 : 1;
}
