//! ZeRO-1's optimizer shards: AdamW is element-wise, so stepping each
//! rank's shard (with the clipping factor of the global norm) gives the
//! whole-arena step bit for bit, including shards that straddle the
//! weight-decay boundary (`ParamLayout::n_decay`); and moments restored
//! from a checkpoint land in each shard's range.

use llama2_model::{Config, Model};
use llama2_runtime::comm::Shards;
use llama2_runtime::rng::Rng;
use llama2_runtime::{vm, Backend, BufKind, CpuBackend};
use llama2_train::checkpoint::restore_optimizer;
use llama2_train::optim::{AdamW, AdamWConfig};

#[test]
fn sharded_adamw_steps_equal_the_whole_step_bit_for_bit() {
    let be = CpuBackend::new(2).unwrap();
    let mut cfg = Config::new(97, 48, 64, 2, 4, 2);
    cfg.max_seq_len = 32;
    let whole_model = Model::init_random(&be, cfg.clone(), 1).unwrap();
    let lay = whole_model.layout.clone();
    let mut rng = Rng::new(3);
    let g: Vec<f32> = (0..lay.total).map(|_| rng.normal() * 0.1).collect();
    let mut grads = be.alloc(lay.total, BufKind::F32).unwrap();
    be.upload(vm(&mut grads), &g).unwrap();
    let cfgw = AdamWConfig { grad_clip: 0.5, ..AdamWConfig::default() };
    // the whole arena, two steps
    let mut params = whole_model.params;
    let mut whole = AdamW::new(&be, &lay, cfgw).unwrap();
    let mut st = None;
    for _ in 0..2 {
        st = Some(whole.update(&be, &mut params, &grads, &lay, 1e-2).unwrap());
    }
    let want = {
        let mut h = vec![0f32; lay.total];
        be.download(llama2_runtime::v(&params), &mut h).unwrap();
        h
    };
    let st = st.unwrap();
    assert!(st.clip_scale < 1.0, "the test should clip ({})", st.clip_scale);
    for world in [2, 3, 5] {
        let shards = Shards::new(lay.total, world);
        assert!(
            (0..world).any(|r| {
                let (o, l) = shards.of(r);
                o < lay.n_decay && o + l > lay.n_decay
            }) || world == 5,
            "a shard straddles n_decay"
        );
        let mut p = Model::init_random(&be, cfg.clone(), 1).unwrap().params;
        let mut opts: Vec<AdamW<CpuBackend>> = (0..world).map(|r| AdamW::new_shard(&be, &lay, cfgw, shards.of(r)).unwrap()).collect();
        for _ in 0..2 {
            let st = opts[0].clip_scale(&be, &grads).unwrap();
            for o in opts.iter_mut() {
                o.apply(&be, &mut p, &grads, &lay, 1e-2, st).unwrap();
            }
        }
        assert!(p.data == want, "world {world}: the sharded steps differ from the whole step");
        // each shard's moments are the whole optimizer's moments in its range
        for (r, o) in opts.iter().enumerate() {
            let (off, len) = shards.of(r);
            assert!(o.m.data[..] == whole.m.data[off..off + len] && o.v.data[..] == whole.v.data[off..off + len], "world {world} rank {r}");
        }
    }
    // restoring whole moments into a shard takes its range
    let moments = (whole.m.data.clone(), whole.v.data.clone(), whole.step);
    let sh = Shards::new(lay.total, 3).of(1);
    let mut o = AdamW::new_shard(&be, &lay, cfgw, sh).unwrap();
    restore_optimizer(&be, &mut o, &moments).unwrap();
    assert!(o.m.data[..] == moments.0[sh.0..sh.0 + sh.1] && o.step == 2);
}
