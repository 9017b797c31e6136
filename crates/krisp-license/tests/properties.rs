//! Invariants that hold for every input.

use krisp_license::krisp_token::{KeySet, PublicKey};
use krisp_license::{LicenseState, RefreshPolicy, evaluate, trusted_time};
use proptest::prelude::*;

fn some_keys() -> KeySet {
    let mut k = [0x66u8; 32];
    k[0] = 0x58;
    let mut ks = KeySet::new();
    ks.insert("k1", PublicKey::from_bytes(&k).expect("base point"));
    ks
}

proptest! {
    #[test]
    fn arbitrary_token_bytes_never_enable_noise_removal(token in ".{0,600}", now in any::<i64>()) {
        let s = evaluate(Some(&token), None, &some_keys(), "dev-a", now);
        prop_assert!(!s.allows_noise_removal());
        let expired = matches!(s, LicenseState::Expired { .. });
        prop_assert!(expired, "{:?}", s);
        prop_assert!(!s.message().is_empty());
    }

    #[test]
    fn token_shaped_garbage_never_enables_noise_removal(
        kid in "[a-z0-9]{1,8}", claims in "[A-Za-z0-9_-]{0,200}", sig in "[A-Za-z0-9_-]{0,100}",
    ) {
        let token = format!("krisp1.{kid}.{claims}.{sig}");
        let s = evaluate(Some(&token), None, &some_keys(), "dev-a", 1_700_000_000);
        prop_assert!(!s.allows_noise_removal());
    }

    #[test]
    fn trusted_time_never_goes_below_the_floor_nor_above_the_clock_or_floor(
        wall in -1_000_000_000_000i64..1_000_000_000_000, floor in proptest::option::of(-1_000_000_000_000i64..1_000_000_000_000),
    ) {
        let t = trusted_time(wall, floor);
        if let Some(f) = floor {
            prop_assert!(t.now >= f);
            prop_assert_eq!(t.now, wall.max(f));
        } else {
            prop_assert_eq!(t.now, wall);
        }
    }

    #[test]
    fn retries_are_always_in_the_future_and_capped(
        now in 0i64..4_000_000_000, failures in any::<u32>(), jitter in 0.0f64..1.0,
    ) {
        let p = RefreshPolicy::default();
        let at = p.next_after_failure(now, failures, jitter);
        prop_assert!(at > now);
        prop_assert!(at <= now + p.max_backoff);
    }

    #[test]
    fn renewal_is_scheduled_before_expiry_for_tokens_longer_than_two_minutes(
        iat in 0i64..4_000_000_000, len in 121i64..10_000_000, elapsed in 0i64..10_000_000,
    ) {
        let exp = iat + len;
        let now = iat + elapsed.min(len / 2);
        let at = RefreshPolicy::default().next_after_success(now, iat, exp);
        prop_assert!(at < exp);
        prop_assert!(at > now);
    }
}
