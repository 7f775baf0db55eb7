//! The layout of the paper's Tables 1-3 (patterns, configurations, columns)
//! and the paper's own figures, transcribed from section 5 of the
//! paper (Son and Livny, *Recovering Internet Symmetry in Distributed
//! Computing*), so our tables can be printed beside theirs.

/// A communication pattern: one of the paper's three tables.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pattern {
    PrivateToPublic,
    PublicToPrivate,
    PrivateToPrivate,
}

/// A configuration: a column pair (tcp, udp) of a table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    Regular,
    Dpf,
    GcbRegularPublic,
    GcbGcbPublic,
    /// Private to private: both sides are in realms, so there is one GCB column.
    Gcb,
}

pub const PATTERNS: [Pattern; 3] = [
    Pattern::PrivateToPublic,
    Pattern::PublicToPrivate,
    Pattern::PrivateToPrivate,
];
pub const PROTOS: [&str; 2] = ["tcp", "udp"];

impl Pattern {
    pub fn key(self) -> &'static str {
        match self {
            Pattern::PrivateToPublic => "private_to_public",
            Pattern::PublicToPrivate => "public_to_private",
            Pattern::PrivateToPrivate => "private_to_private",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Pattern::PrivateToPublic => {
                "Table 1: private → public (client on a1 in realm A, server on pub)"
            }
            Pattern::PublicToPrivate => {
                "Table 2: public → private (client on pub, server on a1 in realm A)"
            }
            Pattern::PrivateToPrivate => {
                "Table 3: private → private (client on b1 in realm B, server on a1 in realm A; GCB is the relay, as in the paper: hole punching has its own table below)"
            }
        }
    }

    /// Short label for the chart.
    pub fn short(self) -> &'static str {
        match self {
            Pattern::PrivateToPublic => "priv→pub",
            Pattern::PublicToPrivate => "pub→priv",
            Pattern::PrivateToPrivate => "priv→priv",
        }
    }

    pub fn client_host(self) -> &'static str {
        match self {
            Pattern::PrivateToPublic => "a1",
            Pattern::PublicToPrivate => "pub",
            Pattern::PrivateToPrivate => "b1",
        }
    }

    pub fn server_host(self) -> &'static str {
        match self {
            Pattern::PrivateToPublic => "pub",
            _ => "a1",
        }
    }

    pub fn configs(self) -> &'static [Config] {
        match self {
            Pattern::PrivateToPrivate => &[Config::Regular, Config::Dpf, Config::Gcb],
            _ => &[
                Config::Regular,
                Config::Dpf,
                Config::GcbRegularPublic,
                Config::GcbGcbPublic,
            ],
        }
    }
}

impl Config {
    pub const ALL: [Config; 5] = [
        Config::Regular,
        Config::Dpf,
        Config::GcbRegularPublic,
        Config::GcbGcbPublic,
        Config::Gcb,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Config::Regular => "regular",
            Config::Dpf => "dpf",
            Config::GcbRegularPublic => "gcb_regular_public",
            Config::GcbGcbPublic => "gcb_gcb_public",
            Config::Gcb => "gcb",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Config::Regular => "Regular",
            Config::Dpf => "DPF",
            Config::GcbRegularPublic => "GCB, reg. public",
            Config::GcbGcbPublic => "GCB, GCB public",
            Config::Gcb => "GCB",
        }
    }

    pub fn is_gcb(self) -> bool {
        matches!(
            self,
            Config::GcbRegularPublic | Config::GcbGcbPublic | Config::Gcb
        )
    }
}

/// One figure of the paper: mean and standard deviation in µs.
pub type Fig = (f64, f64);

/// The paper's (conn, data) for a cell, in µs.
pub fn paper(p: Pattern, c: Config, proto: &str) -> Option<(Fig, Fig)> {
    let col = p.configs().iter().position(|x| *x == c)? * 2 + usize::from(proto == "udp");
    let (conn, data): (&[Fig], &[Fig]) = match p {
        Pattern::PrivateToPublic => (&T1_CONN, &T1_DATA),
        Pattern::PublicToPrivate => (&T2_CONN, &T2_DATA),
        Pattern::PrivateToPrivate => (&T3_CONN, &T3_DATA),
    };
    Some((*conn.get(col)?, *data.get(col)?))
}

// Columns: Regular tcp, udp; DPF tcp, udp; GCB reg. public tcp, udp; GCB public tcp, udp.
const T1_CONN: [Fig; 8] = [
    (1656.0, 258.0),
    (10167.0, 2032.0),
    (1703.0, 552.0),
    (12086.0, 303.0),
    (31428.0, 2720.0),
    (22868.0, 5193.0),
    (33934.0, 9259.0),
    (18692.0, 2255.0),
];
const T1_DATA: [Fig; 8] = [
    (22952.0, 3800.0),
    (2010.0, 912.0),
    (24863.0, 2121.0),
    (693.0, 260.0),
    (21051.0, 1045.0),
    (745.0, 136.0),
    (27629.0, 7388.0),
    (1650.0, 463.0),
];
const T2_CONN: [Fig; 8] = [
    (2007.0, 620.0),
    (12456.0, 206.0),
    (2074.0, 458.0),
    (10894.0, 351.0),
    (2624.0, 753.0),
    (12038.0, 410.0),
    (33530.0, 2902.0),
    (25408.0, 5184.0),
];
const T2_DATA: [Fig; 8] = [
    (21229.0, 933.0),
    (340.0, 32.0),
    (20842.0, 954.0),
    (1004.0, 150.0),
    (36620.0, 4367.0),
    (608.0, 105.0),
    (19455.0, 1664.0),
    (673.0, 25.0),
];
// Columns: Regular tcp, udp; DPF tcp, udp; GCB tcp, udp.
const T3_CONN: [Fig; 6] = [
    (922.0, 37.0),
    (788.0, 5.0),
    (1101.0, 40.0),
    (2204.0, 161.0),
    (6887.0, 182.0),
    (6590.0, 490.0),
];
const T3_DATA: [Fig; 6] = [
    (103726.0, 727.0),
    (592.0, 4.0),
    (102905.0, 720.0),
    (653.0, 1.0),
    (108293.0, 1736.0),
    (2959.0, 207.0),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_cells_land_in_the_right_columns() {
        assert_eq!(
            paper(Pattern::PrivateToPublic, Config::Regular, "tcp"),
            Some(((1656.0, 258.0), (22952.0, 3800.0)))
        );
        assert_eq!(
            paper(Pattern::PublicToPrivate, Config::GcbGcbPublic, "udp"),
            Some(((25408.0, 5184.0), (673.0, 25.0)))
        );
        assert_eq!(
            paper(Pattern::PrivateToPrivate, Config::Gcb, "tcp"),
            Some(((6887.0, 182.0), (108293.0, 1736.0)))
        );
        assert_eq!(
            paper(Pattern::PrivateToPrivate, Config::GcbGcbPublic, "tcp"),
            None
        );
    }
}
