//! Planning a model across several boxes: which box holds how many of its layers.
//!
//! llama-server on the head box (the one the request came to) reaches the other boxes' memory
//! through their RPC workers (`--rpc`); `--tensor-split` gives each device its share of the
//! layers. Each box then holds:
//!
//! * its layers' weights and KV cache: `(layer tensors + KV cache) / n_layer` per layer;
//! * its own compute buffer (every ggml backend reserves the graph for its part) and the fixed
//!   margin (the process around it: llama-server on the head, ggml-rpc-server on a peer);
//! * on the head only, the tensors outside the layers (token embeddings, output).
//!
//! The fractional margin applies to each box's share. Boxes are added in order of free memory,
//! the head first, until the pool holds every layer; layers are then dealt out in proportion to
//! what each box can hold, so the most loaded box is as full as the least.

use crate::gguf::ModelInfo;
use crate::plan::{estimate, largest_fitting_ctx, Margin, Plan, PlanRequest, Verdict, MIN_CTX};
use crate::split::{Member, Share, Split};

/// The plan for `info` across `head` and as few of `peers` as hold it at `req.ctx`, or `None`.
pub fn plan_split(
    info: &ModelInfo,
    req: &PlanRequest,
    head: &Member,
    peers: &[Member],
    margin: &Margin,
) -> Option<Plan> {
    let layers = info.n_layer;
    if layers == 0 {
        return None;
    }
    let e = estimate(info, req.ctx, req.parallel.max(1), req.cache_type);
    let per_layer = info.layer_tensor_bytes.saturating_add(e.kv_cache) as f64 / f64::from(layers);
    let head_extra = e.weights.saturating_sub(info.layer_tensor_bytes) as f64;
    let fixed = e.compute().saturating_add(margin.fixed);
    let grow = 1.0 + margin.fraction.max(0.0);
    let need = |layers: u32, extra: f64| {
        (((f64::from(layers) * per_layer + extra) * grow).ceil() as u64).saturating_add(fixed)
    };
    // The most layers a box with `free` bytes holds.
    let capacity = |free: u64, extra: f64| -> u32 {
        let room = free.saturating_sub(fixed) as f64 / grow - extra;
        if room <= 0.0 {
            0
        } else {
            ((room / per_layer).floor() as u64).min(u64::from(layers)) as u32
        }
    };

    let mut candidates: Vec<&Member> = peers.iter().filter(|p| p.rpc.is_some()).collect();
    candidates.sort_by(|a, b| b.free.cmp(&a.free).then(a.name.cmp(&b.name)));
    let mut chosen: Vec<(&Member, f64, u32)> =
        vec![(head, head_extra, capacity(head.free, head_extra))];
    for peer in candidates {
        if chosen.iter().map(|c| c.2).sum::<u32>() >= layers {
            break;
        }
        let cap = capacity(peer.free, 0.0);
        if cap > 0 {
            chosen.push((peer, 0.0, cap));
        }
    }
    let total_cap: u32 = chosen.iter().map(|c| c.2).sum();
    if chosen.len() < 2 || total_cap < layers {
        return None;
    }
    // Proportional shares, rounded down, then the remainder to the boxes with the most room left.
    let mut given: Vec<u32> = chosen
        .iter()
        .map(|c| (u64::from(layers) * u64::from(c.2) / u64::from(total_cap)) as u32)
        .collect();
    while given.iter().sum::<u32>() < layers {
        let (i, _) = chosen
            .iter()
            .enumerate()
            .filter(|(i, c)| given[*i] < c.2)
            .max_by_key(|(i, c)| c.2 - given[*i])?;
        given[i] += 1;
    }
    let shares: Vec<Share> = chosen
        .iter()
        .zip(&given)
        .filter(|((member, _, _), n)| **n > 0 || member.rpc.is_none())
        .map(|((member, extra, _), n)| Share {
            node_id: member.node_id.clone(),
            name: member.name.clone(),
            rpc: member.rpc,
            layers: *n,
            bytes: need(*n, *extra),
        })
        .collect();
    if shares.len() < 2 {
        return None;
    }
    // Sizes saturate as in `plan::estimate`.
    let total = shares.iter().map(|s| s.bytes).fold(0, u64::saturating_add);
    let budget = chosen.iter().map(|c| c.0.free).fold(0, u64::saturating_add);
    let compute_per_box = e.compute().saturating_mul(shares.len() as u64);
    Some(Plan {
        model: info.display_name().to_string(),
        ctx: req.ctx,
        parallel: req.parallel.max(1),
        ctx_clamped_from: None,
        cache_type: req.cache_type,
        weights: e.weights,
        kv_cache: e.kv_cache,
        compute: compute_per_box,
        margin: total.saturating_sub(e.subtotal().saturating_add(compute_per_box - e.compute())),
        total,
        budget,
        verdict: Verdict::Fits,
        split: Some(Split { shares }),
    })
}

/// The split at the largest context (a multiple of [`crate::plan::CTX_STEP`], at least [`MIN_CTX`], at most
/// `req.ctx`) that the pool holds. Meant for a model the head cannot hold alone at any context
/// (the supervisor plans it locally otherwise), which keeps "fits" monotonic in the context.
pub fn plan_split_largest(
    info: &ModelInfo,
    req: &PlanRequest,
    head: &Member,
    peers: &[Member],
    margin: &Margin,
) -> Option<Plan> {
    let at = |ctx: u32| plan_split(info, &PlanRequest { ctx, ..*req }, head, peers, margin);
    if let Some(plan) = at(req.ctx) {
        return Some(plan);
    }
    let floor = MIN_CTX.min(req.ctx);
    at(floor)?;
    at(largest_fitting_ctx(floor, req.ctx, |ctx| at(ctx).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, CacheType, CTX_STEP};
    use crate::testing::{member, model};

    const MIB: u64 = 1 << 20;

    fn request(budget: u64) -> PlanRequest {
        PlanRequest {
            ctx: 2048,
            parallel: 1,
            cache_type: CacheType::F16,
            budget,
        }
    }

    #[test]
    fn a_model_too_big_for_one_box_is_dealt_out_by_room() {
        let info = model();
        let whole = plan(&info, &request(u64::MAX)).total;
        let head = member("A", whole * 2 / 3, false);
        let peers = [
            member("B", whole * 2 / 3, true),
            member("C", whole * 4, true),
        ];
        let split = plan_split(
            &info,
            &request(head.free),
            &head,
            &peers,
            &Margin::default(),
        )
        .expect("fits across two");
        let s = split.split.as_ref().unwrap();
        // The roomiest peer is asked first, and one is enough.
        assert_eq!(s.names(), vec!["A", "C"]);
        assert_eq!(s.shares.iter().map(|s| s.layers).sum::<u32>(), 30);
        for (share, free) in s.shares.iter().zip([head.free, peers[1].free]) {
            assert!(share.bytes <= free, "{share:?} over {free}");
        }
        assert!(
            split.total > whole,
            "every box carries its own compute buffer and margin"
        );
        assert_eq!(s.rpc_arg(), "10.0.0.1:50052");
        let (ts, ngl) = s.device_args(false);
        assert_eq!(ts, s.shares[1].layers.to_string());
        assert_eq!(ngl, s.shares[1].layers);
        let (ts, ngl) = s.device_args(true);
        assert_eq!(ts, format!("{},{}", s.shares[1].layers, s.shares[0].layers));
        assert_eq!(ngl, 31);
    }

    #[test]
    fn no_split_when_the_pool_is_too_small_or_has_no_workers() {
        let info = model();
        let head = member("A", 200 * MIB, false);
        let req = request(head.free);
        // Each box pays its own compute buffer and fixed margin (~150 MiB here) before layers.
        assert!(plan_split(&info, &req, &head, &[member("B", 160 * MIB, true)], &Margin::default()).is_none());
        assert!(plan_split(&info, &req, &head, &[member("B", 4096 * MIB, false)], &Margin::default()).is_none());
        let three = plan_split(&info, &req, &head, &[member("B", 200 * MIB, true), member("C", 230 * MIB, true)], &Margin::default());
        let three = three.expect("fits across three").split.unwrap();
        assert_eq!(three.names(), vec!["A", "C", "B"]);
        assert_eq!(three.shares.iter().map(|s| s.layers).sum::<u32>(), 30);
    }

    #[test]
    fn the_largest_context_the_pool_holds() {
        let info = model();
        // A cannot hold the model alone at any context, so every answer here is a split.
        let head = member("A", 200 * MIB, false);
        let peers = [member("B", 300 * MIB, true)];
        let req = PlanRequest { ctx: 8192, ..request(head.free) };
        assert!(plan_split(&info, &req, &head, &peers, &Margin::default()).is_none());
        let best = plan_split_largest(&info, &req, &head, &peers, &Margin::default()).expect("a smaller context fits");
        assert!(best.ctx < 8192 && best.ctx >= MIN_CTX && best.ctx.is_multiple_of(CTX_STEP), "{}", best.ctx);
        let larger = PlanRequest { ctx: best.ctx + CTX_STEP, ..req };
        assert!(plan_split(&info, &larger, &head, &peers, &Margin::default()).is_none());
    }
}
