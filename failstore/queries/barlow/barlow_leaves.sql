-- name: barlow_leaves
-- description: Barlow leaves: for each target model, grouping, tag source and class, the leaf
-- description: rows of the latest `failstore barlow` run (or Barlow.fit) that covered the class;
-- description: valid leaves first, then by importance. A group without a tree (no failures, only
-- description: failures, too few images) is one row with a NULL leaf and its status. run_id links
-- description: to analysis_runs. See docs/barlow.md.
-- param: model = NULL -- only this target model
-- param: grouping = NULL -- only this grouping: 'label' or 'prediction'
-- param: valid = NULL -- true: only valid leaves
WITH latest AS (
    SELECT l."class", arg_max(l.run_id, r.used_at) AS run_id
    FROM barlow_tree_leaves AS l
    JOIN analysis_runs AS r ON r.run_id = l.run_id
    WHERE r.analysis = 'barlow'
    GROUP BY l."class", r.run_key
)
SELECT l.*
FROM barlow_tree_leaves AS l
JOIN latest ON latest.run_id = l.run_id AND latest."class" = l."class"
WHERE ($model IS NULL OR l.model = $model)
    AND ($grouping IS NULL OR l."grouping" = $grouping)
    AND ($valid IS NULL OR l.valid = CAST($valid AS BOOLEAN))
ORDER BY l.valid DESC NULLS LAST, l.importance DESC NULLS LAST, l."class", l.leaf
