-- name: barlow_pictures
-- description: The pictures `failstore barlow --pictures DIR` drew for the runs `barlow_leaves`
-- description: shows: per valid leaf and feature of its rule, the group's most-activating images
-- description: (kind 'image'), their heatmaps ('heatmap') and feature attacks ('attack'), with the
-- description: file path and the feature's activation.
-- param: class = NULL -- only this class group
WITH shown AS (
    SELECT DISTINCT run_id, "class" FROM barlow_leaves
)
SELECT p.*
FROM barlow_tree_pictures AS p
JOIN shown ON shown.run_id = p.run_id AND shown."class" = p."class"
WHERE $class IS NULL OR p."class" = $class
ORDER BY p."class", p.leaf, p.feature, p.kind, p.rank
