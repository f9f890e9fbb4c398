#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# The ATen ops of engine/model/top_tokens.cc (now: one top-k where no row ties in its best k + 1, else
# the selection key), of the selection key alone, and of the selection before it, written out in PyTorch
# and timed on the CPU: the k best tokens per row with ties in id order, on ordinary rows, bfloat16 rows
# (many ties) and flat rows (every token tied), and a Logprobs call's few rows. Prints a Markdown table.
#   .venv/bin/python bench/top_tokens_ops.py
import torch, time
torch.set_num_threads(2)
def old(lp,k):
    kth=lp.topk(k,-1).values[:,k-1:k]
    c=max(k,int(((lp>=kth).sum(-1)+lp.isnan().sum(-1)).max()))
    v,i=lp.topk(c,-1); ia,by=i.sort(-1); vb=v.gather(1,by); b,bv=vb.sort(stable=True,dim=-1,descending=True)
    return b[:,:k], ia.gather(1,bv)[:,:k]
def new(lp,k,kth=None):
    if kth is None: kth=lp.topk(k,-1).values[:,k-1:k]
    n=lp.isnan(); kn=kth.isnan()
    better=(lp>kth).logical_or_(n.logical_and(kn.logical_not())); tied=(lp==kth).logical_or_(n.logical_and(kn))
    ids=torch.arange(lp.size(-1),dtype=torch.float)
    key=torch.where(better,torch.tensor(1.0),torch.where(tied,-ids,torch.tensor(float('-inf'))))
    ch=key.topk(k,-1).indices.sort(-1).values; v=lp.gather(1,ch); b,bv=v.sort(stable=True,dim=-1,descending=True)
    return b, ch.gather(1,bv)
def now(lp,k):
    v,i=lp.topk(min(k+1,lp.size(-1)),-1)
    if k<lp.size(-1) and bool((v[:,:k]>v[:,1:]).all()): return v[:,:k], i[:,:k]
    return new(lp,k,v[:,k-1:k])
def t(f,lp,k,reps):
    f(lp,k); s=time.perf_counter()
    for _ in range(reps): f(lp,k)
    return (time.perf_counter()-s)/reps*1e3
print("| rows | vocab | row kind | before (ms) | selection key (ms) | now (ms) |\n|---|---|---|---|---|---|")
for N,V in [(5,4000),(20,32000),(512,32000),(128,128256)]:
    for kind in ["log_softmax of randn","bf16 log_softmax (ties)","flat"]:
        if kind=="flat": lp=torch.full((N,V),-torch.log(torch.tensor(float(V))).item())
        elif kind.startswith("bf16"): lp=torch.log_softmax(torch.randn(N,V)*2,-1).bfloat16()
        else: lp=torch.log_softmax(torch.randn(N,V)*2,-1)
        a=old(lp,20); b=new(lp,20); c=now(lp,20); assert torch.equal(a[1],b[1]) and torch.equal(a[1],c[1])
        reps=200 if N*V<1e6 else 10
        print(f"| {N} | {V} | {kind} | {t(old,lp,20,3 if kind=='flat' else reps):.2f} | {t(new,lp,20,reps):.2f} | {t(now,lp,20,reps):.2f} |")
