"""Host model of the forward's online softmax (cuda/attend_fwd_parts.cuh, fwd_softmax_tile): the
version before branch wip/fwd-ffma (scale, max, subtract, exp2, rescale every tile) against
the new one (max of raw scores, one FFMA per exponent, the rescale skipped per warp of 16
rows unless a max grows by more than 2^8), over random multi-tile cases with masks, +-inf,
NaN and every scale sign, in float32 with numpy. Prints the cases that disagree (none
expected). A design check, not a kernel test: the kernels are checked on a GPU by
tests/python/test_gpu_kernels.py.

    python3 cuda/dev/softmax_host_model.py
"""
import numpy as np
np.seterr(all='ignore'); f32=np.float32
def tile_old(S,c,mask,m,l,acc,V):
    x=(S*c).astype(f32)
    if mask is not None: x=np.where(mask,x,f32(-np.inf))
    mx=np.fmax.reduce(x,axis=1,initial=-np.inf).astype(f32)
    mn=np.fmax(m,mx); mu=np.where(mn==-np.inf,f32(0),mn)
    a=np.exp2(m-mu).astype(f32); p=np.exp2(x-mu[:,None]).astype(f32)
    return mn,(l*a+p.sum(1)).astype(f32),(acc*a[:,None]+p@V).astype(f32)
def tile_new(S,c,mask,m,l,acc,V,warp=16,slack=8.0):
    if mask is not None or c==0:
        x=(S*c).astype(f32)
        S=np.where(mask,x,f32(-np.inf)) if mask is not None else x; c=f32(1)
    mx=(np.fmax.reduce(S,axis=1,initial=-np.inf) if c>=0 else np.fmin.reduce(S,axis=1,initial=np.inf))
    mx=(mx*c).astype(f32); mn=np.fmax(m,mx)
    grows=mn>m+f32(slack)
    res=np.repeat(grows.reshape(-1,warp).any(1),warp)
    mu_new=np.where(mn==-np.inf,f32(0),mn)
    a=np.where(res,np.exp2(m-mu_new),f32(1)).astype(f32)
    m2=np.where(res,mn,m).astype(f32); mu=np.where(m2==-np.inf,f32(0),m2)
    p=np.exp2((S.astype(np.float64)*np.float64(c)-mu[:,None]).astype(f32)).astype(f32)
    l2=np.where(res,l*a+p.sum(1),l+p.sum(1)).astype(f32)
    acc2=np.where(res[:,None],acc*a[:,None],acc)+p@V
    return m2,l2,acc2.astype(f32)
def run(tile,Ss,c,masks,V):
    R=Ss[0].shape[0]; D=V[0].shape[1]
    m=np.full(R,-np.inf,f32); l=np.zeros(R,f32); acc=np.zeros((R,D),f32)
    for S,mk,Vt in zip(Ss,masks,V): m,l,acc=tile(S,c,mk,m,l,acc,Vt)
    empty=(l==0)
    o=np.where(empty[:,None],0,acc/np.where(empty,1,l)[:,None]); lse=np.where(empty,-np.inf,m+np.log2(np.where(empty,1,l)))
    return o,lse
rng=np.random.default_rng(1); bad=0; N=0
for trial in range(800):
    R,BN,D,T=32,16,8,int(rng.integers(1,7))
    amp=rng.choice([1,4,30])
    Ss=[(rng.standard_normal((R,BN))*amp + rng.standard_normal()*amp*j).astype(f32) for j in range(T)]  # drifting max
    if trial%7==0: Ss[rng.integers(T)][rng.integers(R),rng.integers(BN)]=rng.choice([np.inf,-np.inf,np.nan])
    c=f32(rng.choice([0.18,1.44,-0.5,0.0,2.0]))
    masks=[(rng.random((R,BN))>0.5) if (trial%3==0 and rng.random()<0.5) else None for _ in range(T)]
    V=[rng.standard_normal((BN,D)).astype(f32) for _ in range(T)]
    o1,l1=run(tile_old,Ss,c,masks,V); o2,l2=run(tile_new,Ss,c,masks,V)
    N+=1
    ok=np.allclose(o1,o2,rtol=1e-3,atol=1e-5,equal_nan=True) and np.allclose(l1,l2,rtol=1e-4,atol=1e-4,equal_nan=True)
    if not ok:
        bad+=1
        if bad<4:
            i=np.where(~np.isclose(l1,l2,rtol=1e-4,atol=1e-4,equal_nan=True))[0]
            print("c",c,"T",T,"lse rows differ",i[:5],l1[i[:5]],l2[i[:5]])
            j=np.where(~np.isclose(o1,o2,rtol=1e-3,atol=1e-5,equal_nan=True).all(1))[0]; print(" o rows differ",j[:5], o1[j[:1]], o2[j[:1]])
print("trials",N,"mismatches",bad)
