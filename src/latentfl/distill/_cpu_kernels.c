/* The CPU engine's instance-norm + ReLU + 2x2 average-pool block in two or three passes over
 * memory per function instead of PyTorch's eight to twenty-five eager kernels, and the image
 * layer's input gradient (few input channels) as one pass over the output gradient
 * (latentfl.distill._native compiles this file at first use; _fused_convnet.py holds the math,
 * in its module docstring, and the eager path these loops replace).
 *
 * Layout: channels last. y, xhat, u, gy, c_gy, d_y are (N, L, C) with L = H * W, row-major over
 * (h, w); out, g_out, d_gout are (N, H/2, W/2, C); per-instance vectors (rstd, s_u, s_ux) are
 * (N, C); gamma, beta, c_gg, c_gb, d_gamma are (C). Every array is contiguous. Sums over
 * positions accumulate in double, for float too. No fast-math: each value is the eager path's
 * expression, up to the order of its sums. The ReLU's input is not stored: every loop recomputes
 * it from xhat as FMA(xhat, gamma, beta), bit for bit the forward's value, so every mask is the
 * forward's. Each function returns 0, 1 when it could not allocate its scratch space, or 2 for
 * sizes it does not take (it then writes nothing useful).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_KERNELS(T, SUFFIX, FMA)                                                            \
                                                                                                 \
int block_forward_##SUFFIX(const T *restrict y, const T *restrict gamma, const T *restrict beta, \
                           double eps, long n, long h, long w, long c, T *restrict xhat,         \
                           T *restrict rstd, T *restrict out) {                                  \
    const long len = h * w;                                                                      \
    double *acc = malloc(2 * c * sizeof(double));                                                \
    if (!acc) return 1;                                                                          \
    double *mean = acc, *sq = acc + c;                                                           \
    for (long i = 0; i < n; i++) {                                                               \
        const T *yi = y + i * len * c;                                                           \
        T *xi = xhat + i * len * c, *ri = rstd + i * c;                                          \
        memset(acc, 0, 2 * c * sizeof(double));                                                  \
        for (long l = 0; l < len; l++)                                                           \
            for (long k = 0; k < c; k++) mean[k] += yi[l * c + k];                               \
        for (long k = 0; k < c; k++) mean[k] /= (double)len;                                     \
        for (long l = 0; l < len; l++)                                                           \
            for (long k = 0; k < c; k++) {                                                       \
                T d = yi[l * c + k] - (T)mean[k]; /* centred first: the two-pass variance */   \
                sq[k] += (double)d * d;                                                          \
            }                                                                                    \
        for (long k = 0; k < c; k++) ri[k] = (T)(1.0 / sqrt(sq[k] / (double)len + eps));         \
        /* xhat, and the ReLU's output pooled over each 2x2 window */                           \
        T *oi = out + i * (h / 2) * (w / 2) * c;                                                 \
        for (long p = 0; p < h / 2; p++)                                                         \
            for (long q = 0; q < w / 2; q++) {                                                   \
                const long j00 = ((2 * p) * w + 2 * q) * c, j10 = j00 + w * c;                   \
                T *o = oi + (p * (w / 2) + q) * c;                                               \
                for (long k = 0; k < c; k++) {                                                   \
                    const T m = (T)mean[k], r = ri[k];                                           \
                    T x00 = (yi[j00 + k] - m) * r, x10 = (yi[j10 + k] - m) * r;                  \
                    T x01 = (yi[j00 + c + k] - m) * r, x11 = (yi[j10 + c + k] - m) * r;          \
                    xi[j00 + k] = x00;                                                           \
                    xi[j10 + k] = x10;                                                           \
                    xi[j00 + c + k] = x01;                                                       \
                    xi[j10 + c + k] = x11;                                                       \
                    T a00 = FMA(x00, gamma[k], beta[k]), a10 = FMA(x10, gamma[k], beta[k]);      \
                    T a01 = FMA(x01, gamma[k], beta[k]), a11 = FMA(x11, gamma[k], beta[k]);      \
                    a00 = a00 < 0 ? 0 : a00; /* NaN passes, as with clamp_min */               \
                    a10 = a10 < 0 ? 0 : a10;                                                     \
                    a01 = a01 < 0 ? 0 : a01;                                                     \
                    a11 = a11 < 0 ? 0 : a11;                                                     \
                    o[k] = ((a00 + a10) + (a01 + a11)) * (T)0.25;                                \
                }                                                                                \
            }                                                                                    \
    }                                                                                            \
    free(acc);                                                                                   \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
int block_backward_##SUFFIX(const T *restrict g_out, const T *restrict xhat,                     \
                            const T *restrict gamma, const T *restrict beta,                     \
                            const T *restrict rstd, long n, long h, long w, long c,              \
                            T *restrict u, T *restrict s_u, T *restrict s_ux, T *restrict gy) {  \
    const long len = h * w;                                                                      \
    double *acc = malloc(2 * c * sizeof(double));                                                \
    T *coef = malloc(3 * c * sizeof(T));                                                         \
    if (!acc || !coef) { free(acc); free(coef); return 1; }                                      \
    double *su = acc, *sux = acc + c;                                                            \
    T *c0 = coef, *c1 = coef + c, *c2 = coef + 2 * c;                                            \
    for (long i = 0; i < n; i++) {                                                               \
        const T *xi = xhat + i * len * c;                                                        \
        const T *gi = g_out + i * (h / 2) * (w / 2) * c;                                         \
        T *ui = u + i * len * c, *gyi = gy + i * len * c;                                        \
        memset(acc, 0, 2 * c * sizeof(double));                                                  \
        for (long r = 0; r < h; r++)                                                             \
            for (long s = 0; s < w; s++) {                                                       \
                const long l = r * w + s;                                                        \
                const T *g = gi + ((r / 2) * (w / 2) + s / 2) * c;                               \
                for (long k = 0; k < c; k++) {                                                   \
                    const T x = xi[l * c + k], quarter = g[k] * (T)0.25;                         \
                    T v = FMA(x, gamma[k], beta[k]) <= 0 ? 0 : quarter; /* ReLU's mask */       \
                    ui[l * c + k] = v;                                                           \
                    su[k] += v;                                                                  \
                    sux[k] += (double)v * x;                                                     \
                }                                                                                \
            }                                                                                    \
        T *sui = s_u + i * c, *suxi = s_ux + i * c;                                              \
        for (long k = 0; k < c; k++) {                                                           \
            sui[k] = (T)su[k];                                                                   \
            suxi[k] = (T)sux[k];                                                                 \
            T kk = rstd[i * c + k] * gamma[k];                                                   \
            c0[k] = -kk * sui[k] / (T)len;                                                       \
            c1[k] = kk;                                                                          \
            c2[k] = -kk * suxi[k] / (T)len;                                                      \
        }                                                                                        \
        for (long l = 0; l < len; l++)                                                           \
            for (long k = 0; k < c; k++)                                                         \
                gyi[l * c + k] = (c0[k] + ui[l * c + k] * c1[k]) + xi[l * c + k] * c2[k];        \
    }                                                                                            \
    free(acc);                                                                                   \
    free(coef);                                                                                  \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
int block_double_backward_##SUFFIX(                                                              \
        const T *restrict c_gy, const T *restrict c_gg, const T *restrict c_gb,                  \
        const T *restrict gamma, const T *restrict beta, const T *restrict xhat,                 \
        const T *restrict rstd, const T *restrict u, const T *restrict s_u,                      \
        const T *restrict s_ux, long n, long h, long w, long c,                                  \
        T *restrict d_gout, T *restrict d_y, T *restrict d_gamma) {                              \
    const long len = h * w;                                                                      \
    double *acc = malloc(4 * c * sizeof(double));                                                \
    T *coef = malloc(7 * c * sizeof(T)); /* this instance's per-channel coefficients */        \
    if (!acc || !coef) { free(acc); free(coef); return 1; }                                      \
    double *m_gy = acc, *m_gyx = acc + c, *gy_u = acc + 2 * c, *dg = acc + 3 * c;                \
    T *cu0 = coef, *cu1 = coef + c, *cx = coef + 2 * c, *y0 = coef + 3 * c, *yu = coef + 4 * c;  \
    T *yg = coef + 5 * c, *yx = coef + 6 * c;                                                    \
    memset(dg, 0, c * sizeof(double));                                                           \
    for (long i = 0; i < n; i++) {                                                               \
        const T *cgi = c_gy + i * len * c, *xi = xhat + i * len * c, *ui = u + i * len * c;      \
        memset(acc, 0, 3 * c * sizeof(double));                                                  \
        for (long l = 0; l < len; l++)                                                           \
            for (long k = 0; k < c; k++) {                                                       \
                double g = cgi[l * c + k];                                                       \
                m_gy[k] += g;                                                                    \
                m_gyx[k] += g * xi[l * c + k];                                                   \
                gy_u[k] += g * ui[l * c + k];                                                    \
            }                                                                                    \
        for (long k = 0; k < c; k++) {                                                           \
            T r = rstd[i * c + k], kk = r * gamma[k];                                            \
            T mg = (T)(m_gy[k] / (double)len), mgx = (T)(m_gyx[k] / (double)len);                \
            T a = s_u[i * c + k] / (T)len, b = s_ux[i * c + k] / (T)len;                         \
            T proj = (T)gy_u[k] - (T)len * (a * mg + b * mgx);                                   \
            T coef_u = c_gg[k] - kk * mgx;                                                       \
            T mean_gx = coef_u * a - kk * b * mg;                                                \
            T big_r = gamma[k] * proj + (coef_u * s_ux[i * c + k] - kk * b * (T)len * mgx) / r;  \
            dg[k] += (double)(r * proj);                                                         \
            cu0[k] = c_gb[k] - kk * mg;                                                          \
            cu1[k] = kk;                                                                         \
            cx[k] = coef_u;                                                                      \
            y0[k] = -r * mean_gx;                                                                \
            yu[k] = r * coef_u;                                                                  \
            yg[k] = -r * kk * b;                                                                 \
            yx[k] = -big_r * r * r / (T)len;                                                     \
        }                                                                                        \
        T *dyi = d_y + i * len * c;                                                              \
        for (long l = 0; l < len; l++)                                                           \
            for (long k = 0; k < c; k++) {                                                       \
                const long j = l * c + k;                                                        \
                dyi[j] = ((y0[k] + ui[j] * yu[k]) + cgi[j] * yg[k]) + xi[j] * yx[k];             \
            }                                                                                    \
        T *dgi = d_gout + i * (h / 2) * (w / 2) * c;                                             \
        for (long p = 0; p < h / 2; p++)                                                         \
            for (long q = 0; q < w / 2; q++) {                                                   \
                const long j00 = ((2 * p) * w + 2 * q) * c, j10 = j00 + w * c;                   \
                T *o = dgi + (p * (w / 2) + q) * c;                                              \
                for (long k = 0; k < c; k++) {                                                   \
                    const T x00 = xi[j00 + k], x10 = xi[j10 + k];                                \
                    const T x01 = xi[j00 + c + k], x11 = xi[j10 + c + k];                        \
                    T d00 = (cu0[k] + cgi[j00 + k] * cu1[k]) + x00 * cx[k];                      \
                    T d10 = (cu0[k] + cgi[j10 + k] * cu1[k]) + x10 * cx[k];                      \
                    T d01 = (cu0[k] + cgi[j00 + c + k] * cu1[k]) + x01 * cx[k];                  \
                    T d11 = (cu0[k] + cgi[j10 + c + k] * cu1[k]) + x11 * cx[k];                  \
                    d00 = FMA(x00, gamma[k], beta[k]) <= 0 ? 0 : d00;                            \
                    d10 = FMA(x10, gamma[k], beta[k]) <= 0 ? 0 : d10;                            \
                    d01 = FMA(x01, gamma[k], beta[k]) <= 0 ? 0 : d01;                            \
                    d11 = FMA(x11, gamma[k], beta[k]) <= 0 ? 0 : d11;                            \
                    o[k] = ((d00 + d10) + (d01 + d11)) * (T)0.25;                                \
                }                                                                                \
            }                                                                                    \
    }                                                                                            \
    for (long k = 0; k < c; k++) d_gamma[k] = (T)dg[k];                                          \
    free(acc);                                                                                   \
    free(coef);                                                                                  \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
int image_input_grad_##SUFFIX(const T *restrict g, const T *restrict wt, long n, long h, long w, \
                              long c_out, long c_in, T *restrict out) {                          \
    /* taps = c_in * 9 <= 27, padded to 32: each pixel's sums are two fixed-width vectors, and */ \
    /* four pixels of a row go together so eight independent sums hide the FMA latency */        \
    const long taps = c_in * 9;                                                                  \
    if (taps > 32 || w % 4) return 2;                                                            \
    T *wpad = calloc((size_t)c_out * 32, sizeof(T));                                             \
    if (!wpad) return 1;                                                                         \
    for (long o = 0; o < c_out; o++)                                                             \
        for (long j = 0; j < taps; j++) wpad[o * 32 + j] = wt[o * taps + j];                     \
    memset(out, 0, (size_t)n * h * w * c_in * sizeof(T));                                       \
    for (long i = 0; i < n; i++) {                                                               \
        T *oi = out + i * h * w * c_in;                                                          \
        for (long r = 0; r < h; r++)                                                             \
            for (long s0 = 0; s0 < w; s0 += 4) {                                                 \
                const T *gp = g + ((i * h + r) * w + s0) * c_out;                                \
                T p[4][32] = {{0}};                                                              \
                for (long o = 0; o < c_out; o++) {                                               \
                    const T *wo = wpad + o * 32;                                                 \
                    for (int t = 0; t < 4; t++) {                                                \
                        const T gv = gp[t * c_out + o];                                          \
                        for (int j = 0; j < 32; j++) p[t][j] += gv * wo[j];                      \
                    }                                                                            \
                }                                                                                \
                /* p[t][ci, dy, dx] lands on the input pixel (r + dy - 1, s0 + t + dx - 1) */   \
                for (int t = 0; t < 4; t++)                                                      \
                    for (long dy = 0; dy < 3; dy++) {                                            \
                        const long rr = r + dy - 1;                                              \
                        if (rr < 0 || rr >= h) continue;                                         \
                        for (long dx = 0; dx < 3; dx++) {                                        \
                            const long ss = s0 + t + dx - 1;                                     \
                            if (ss < 0 || ss >= w) continue;                                     \
                            T *op = oi + (rr * w + ss) * c_in;                                   \
                            for (long ci = 0; ci < c_in; ci++)                                   \
                                op[ci] += p[t][ci * 9 + dy * 3 + dx];                            \
                        }                                                                        \
                    }                                                                            \
            }                                                                                    \
    }                                                                                            \
    free(wpad);                                                                                  \
    return 0;                                                                                    \
}

BLOCK_KERNELS(float, f32, fmaf)
BLOCK_KERNELS(double, f64, fma)
