-- name: barlow_members
-- description: Which Barlow leaf each image fell in, for the runs `barlow_leaves` shows: one row
-- description: per (run, class group, image), with the image's label, prediction and failure flag.
-- description: Join it with `images` or `samples` on image_id to see a leaf's tags and pictures.
-- param: model = NULL -- only this target model
-- param: class = NULL -- only this class group
-- param: leaf = NULL -- only this leaf (its node id)
WITH latest AS (
    SELECT l."class", arg_max(l.run_id, r.used_at) AS run_id
    FROM barlow_tree_leaves AS l
    JOIN analysis_runs AS r ON r.run_id = l.run_id
    WHERE r.analysis = 'barlow'
    GROUP BY l."class", r.run_key
)
SELECT m.*
FROM barlow_tree_members AS m
JOIN latest ON latest.run_id = m.run_id AND latest."class" = m."class"
WHERE ($model IS NULL OR m.model = $model)
    AND ($class IS NULL OR m."class" = $class)
    AND ($leaf IS NULL OR m.leaf = CAST($leaf AS INTEGER))
ORDER BY m."class", m.leaf, m.image_id
