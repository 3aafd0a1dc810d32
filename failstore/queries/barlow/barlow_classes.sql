-- name: barlow_classes
-- description: One row per Barlow class group of the runs `barlow_leaves` shows: its size,
-- description: failures, base error rate (BER), average leaf error rate (ALER), ALER - BER, the
-- description: number of valid leaves and the best leaf's rule and description.
-- description: Parameters are barlow_leaves' ($model, $grouping).
SELECT
    model,
    "grouping",
    tag_source,
    "class",
    any_value(status) AS status,
    any_value(group_size) AS group_size,
    any_value(group_failures) AS group_failures,
    any_value(base_error_rate) AS base_error_rate,
    any_value(aler) AS aler,
    any_value(aler_gain) AS aler_gain,
    count(*) FILTER (WHERE valid) AS valid_leaves,
    arg_max(rule, importance) AS best_rule,
    arg_max(description, importance) AS best_description,
    max(importance) AS best_importance
FROM barlow_leaves
GROUP BY model, "grouping", tag_source, "class"
ORDER BY aler_gain DESC NULLS LAST, "class"
