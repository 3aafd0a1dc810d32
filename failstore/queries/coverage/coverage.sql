-- name: coverage
-- description: Shared-Interest coverage of the latest `failstore coverage` run (or Coverage.fit)
-- description: for each target model, saliency method and explained class kind: one row per
-- description: image with IoU, ground-truth coverage (gtc), saliency coverage (sc), soft sc and its
-- description: case. run_id links to analysis_runs. See docs/coverage.md.
-- param: model = NULL -- only this target model
-- param: method = NULL -- only this saliency method
-- param: case = NULL -- only this case (e.g. 'distractor')
-- param: class = NULL -- only images of this label
SELECT c.*
FROM coverage_scores AS c
WHERE c.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'coverage'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR c.model = $model)
    AND ($method IS NULL OR c.method = $method)
    AND ($case IS NULL OR c."case" = $case)
    AND ($class IS NULL OR c.label = $class)
ORDER BY c.model, c.method, c.label, c.image_id
