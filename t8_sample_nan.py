import sys; sys.path.insert(0, "/tmp/r8/r1")
from common import *
s = stub(int(sys.argv[1])); prompt = [301, 437, 905, 329, 688, 412, 763]
for gs in [dict(max_new_tokens=3, temperature=1.0, seed=1), dict(max_new_tokens=3, temperature=0.7, top_k=5, seed=1), dict(max_new_tokens=3)]:
    try:
        g = s.Generate(pb.GenerateRequest(model="actoverflow", prompt=ids(prompt), generation=pb.GenerationSettings(**gs)))
        print(gs, "OK", [(t.id, t.text, t.log_prob) for t in g.tokens], "text", repr(g.text))
    except grpc.RpcError as e: print(gs, e.code(), e.details())
# Attribute without a target: generated greedily first
try:
    r = s.Attribute(pb.AttributeRequest(model="actoverflow", prompt=ids(prompt), generation=pb.GenerationSettings(max_new_tokens=3)))
    print("attribute(generated target) OK target", [t.id for t in r.target_tokens], "attr", list(r.sequence_attribution)[:3])
except grpc.RpcError as e: print("attribute gen", e.code(), e.details())
