//! The parameter arena's order (each layer's wq|wk|wv and wgate|wup
//! adjacent, so a fused product reads one window) and the activation
//! estimate `Acts::bytes_f32` against what the buffers really hold.

use llama2_model::config::Head;
use llama2_model::{Acts, Config, GradActs, LogitRows, Model, ParamId, ParamLayout};
use llama2_runtime::CpuBackend;

fn gqa() -> Config {
    let mut c = Config::new(61, 32, 40, 3, 4, 2);
    c.max_seq_len = 16;
    c
}

#[test]
fn every_tensor_has_its_own_elements_and_the_groups_are_one_window() {
    for (cfg, tied) in [(gqa(), false), (Config::new(50, 16, 24, 2, 2, 2), true)] {
        let mut cfg = cfg;
        cfg.tie_embeddings = tied;
        let lay = ParamLayout::new(&cfg);
        // the ranges tile the arena exactly: every element belongs to one tensor of one layer
        let mut owner = vec![0u8; lay.total];
        for (id, l, _) in lay.hf_tensors(&cfg) {
            let (o, n) = lay.range(id, l);
            assert_eq!(n, id.hf_shape(&cfg).iter().product::<usize>(), "{id:?} {l}");
            for x in &mut owner[o..o + n] {
                *x += 1;
            }
        }
        assert!(owner.iter().all(|&x| x == 1), "ranges overlap or leave gaps");
        // the decay group (matrices) comes first, the RMSNorm gains after
        for (id, l, _) in lay.hf_tensors(&cfg) {
            let (o, n) = lay.range(id, l);
            assert_eq!(id.decays(), o + n <= lay.n_decay, "{id:?} {l}");
        }
        let (q, kv, i, c) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate, cfg.hidden);
        for l in 0..cfg.n_layers {
            let (o, n) = lay.span(ParamId::Wq, ParamId::Wv, l).expect("wq..wv one window");
            assert_eq!((o, n), (lay.range(ParamId::Wq, l).0, (q + 2 * kv) * c));
            assert_eq!(lay.range(ParamId::Wk, l).0, o + q * c);
            assert_eq!(lay.range(ParamId::Wv, l).0, o + (q + kv) * c);
            let (o, n) = lay.span(ParamId::Wgate, ParamId::Wup, l).expect("gate..up one window");
            assert_eq!((o, n), (lay.range(ParamId::Wgate, l).0, 2 * i * c));
            assert_eq!(lay.range(ParamId::Wup, l).0, o + i * c);
        }
        // not one group, or out of order: no window
        assert_eq!(lay.span(ParamId::Wq, ParamId::Wo, 0), None);
        assert_eq!(lay.span(ParamId::Wv, ParamId::Wq, 0), None);
    }
}

/// `from_stacked` puts a vector in the stacked order (each tensor whole,
/// layer after layer, in `ParamId::ALL` order: the order random init draws
/// in) where the arena keeps each tensor: the arena rebuilt by name from a
/// model's HF tensors comes back to the model's arena.
#[test]
fn from_stacked_inverts_the_stacked_order() {
    let be = CpuBackend::new(1).unwrap();
    let cfg = gqa();
    let m = Model::init_random(&be, cfg.clone(), 3).unwrap();
    let host = m.params_host(&be).unwrap();
    let w = m.to_hf(&be).unwrap();
    let mut stacked = Vec::new();
    for (_, _, name) in m.layout.hf_tensors(&cfg) {
        stacked.extend_from_slice(&w.get(&name).unwrap().data);
    }
    let mut back = vec![0f32; host.len()];
    m.layout.from_stacked(&cfg, &stacked, &mut back).unwrap();
    assert_eq!(back, host);
    // the stacked order is not the arena order (wk of layer 0 sits after
    // every layer's wq there), so the test above can tell them apart
    assert_ne!(stacked, host);
    assert!(m.layout.from_stacked(&cfg, &stacked[1..], &mut back).is_err());
}

#[test]
fn the_activation_estimate_is_what_the_buffers_hold() {
    let be = CpuBackend::new(1).unwrap();
    let (b, t) = (3, 8);
    let mut score = gqa();
    score.head = Head::Score;
    score.tie_embeddings = false;
    for cfg in [gqa(), score] {
        let rows: &[LogitRows] = if cfg.head == Head::Lm { &[LogitRows::All, LogitRows::Last, LogitRows::Chunked(5)] } else { &[LogitRows::All] };
        for &rows in rows {
            for training in [true, false] {
                let acts = Acts::new(&be, &cfg, b, t, training, rows).unwrap();
                let mut have = acts.elements();
                if training {
                    have += GradActs::new(&be, &cfg, b, t).unwrap().elements();
                }
                let est = Acts::<CpuBackend>::bytes_f32(&cfg, b, t, training, rows, false);
                assert_eq!(est, 4 * have, "{:?} {rows:?} training {training}", cfg.head);
                // a fusing backend adds one scratch to the forward's buffers, one to the backward's
                let fused = Acts::<CpuBackend>::bytes_f32(&cfg, b, t, training, rows, true);
                let proj = b * t * (cfg.q_dim() + 2 * cfg.kv_dim()).max(2 * cfg.intermediate);
                assert_eq!(fused - est, 4 * proj * if training { 2 } else { 1 });
            }
        }
    }
}
